"""arq on Redis: its own defaults, the worker run by its own command in burst mode.

arq keeps a job's data until it finished and marks it in progress with an expiring key:
a worker that dies leaves the job to be run again once that key expires. Production
settings from arq's docs: the defaults (``max_jobs`` 10, results kept an hour,
``poll_delay`` 0.5 s, which only matters once the queue is empty). The worker:
``arq MODULE.WorkerSettings --burst`` (one process; it exits when the queue is empty).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, ClassVar

from bench.peers import common

MODULE = "bench.peers.arq_peer"


async def noop(ctx: dict[str, Any], n: int, sent: float) -> None:
    """The no-op job."""
    common.note({"n": n, "sent": sent})


class WorkerSettings:
    """What ``arq`` reads: the job, the queue and the server from the environment."""

    functions: ClassVar[list[Any]] = [noop]
    queue_name = os.environ.get(common.QUEUE_VARIABLE, "arq:queue")
    redis_settings: Any = None
    if common.URL_VARIABLE in os.environ:
        from arq.connections import RedisSettings  # type: ignore[import-not-found,unused-ignore]

        redis_settings = RedisSettings.from_dsn(os.environ[common.URL_VARIABLE])


async def _fill(url: str, queue: str, count: int) -> list[str]:
    from arq import create_pool  # type: ignore[import-not-found,unused-ignore]
    from arq.connections import RedisSettings  # type: ignore[import-not-found,unused-ignore]

    pool = await create_pool(RedisSettings.from_dsn(url), default_queue_name=queue)
    ids = []
    try:
        for payload in common.payloads(count):
            job = await pool.enqueue_job("noop", payload["n"], payload["sent"], _queue_name=queue)
            ids.append(job.job_id)
    finally:
        await pool.aclose()
    return ids


async def _clean(url: str, queue: str, ids: list[str]) -> None:
    from arq import create_pool  # type: ignore[import-not-found,unused-ignore]
    from arq.connections import RedisSettings  # type: ignore[import-not-found,unused-ignore]

    pool = await create_pool(RedisSettings.from_dsn(url))
    try:
        await pool.delete(queue)
        # the results it keeps an hour, as in production: ours removed, not left on db 15
        keys = [f"arq:result:{job_id}" for job_id in ids]
        for i in range(0, len(keys), 1000):
            await pool.delete(*keys[i : i + 1000])
    finally:
        await pool.aclose()


def drain(url: str, count: int, folder: Path) -> dict[str, Any]:
    """Enqueue ``count`` jobs, then run ``arq --burst`` until it has started them all."""
    queue = common.queue_name("arq")
    ids = asyncio.run(_fill(url, queue, count))
    try:
        command = [common.tool("arq"), f"{MODULE}.WorkerSettings", "--burst"]
        result = common.run_worker(command, url, queue, count, folder, halts=True)
    finally:
        asyncio.run(_clean(url, queue, ids))
    result["settings"] = "defaults (max_jobs 10)"
    return result


if __name__ == "__main__":
    common.main(drain)
