"""arq on the async table's I/O-bound tasks: run by the bench-only venv's Python.

``python bench/arq_peer.py REDIS_URL CONCURRENCY COUNT SLEEP`` enqueues COUNT jobs on a
queue of its own, runs one arq worker (``max_jobs`` = CONCURRENCY, ``burst``) whose job
notes its start and awaits ``asyncio.sleep(SLEEP)``, and prints JSON: the rate from the
first start to the last, like ours. arq polls its queue every ``poll_delay`` seconds (0.5
by default); 0.01 here, arq at its fastest. It lives in its own venv (``make bench``
PEERS=1`` makes ``.venv-peers``): never one of the project's dependencies.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import uuid
from typing import Any

from arq import create_pool  # type: ignore[import-not-found,unused-ignore]
from arq.connections import RedisSettings  # type: ignore[import-not-found,unused-ignore]
from arq.worker import Worker, func  # type: ignore[import-not-found,unused-ignore]

STARTS: list[float] = []


async def main(url: str, concurrency: int, count: int, sleep: float) -> dict[str, Any]:
    queue = f"bench_arq_{uuid.uuid4().hex[:10]}"
    settings = RedisSettings.from_dsn(url)

    async def job(ctx: dict[str, Any], n: int) -> None:
        STARTS.append(time.time())
        await asyncio.sleep(sleep)

    pool = await create_pool(settings, default_queue_name=queue)
    try:
        for n in range(count):
            await pool.enqueue_job("job", n, _queue_name=queue)
        worker = Worker(
            functions=[func(job, name="job")],
            redis_settings=settings,
            queue_name=queue,
            max_jobs=concurrency,
            burst=True,
            poll_delay=0.01,
            handle_signals=False,
            keep_result=0,
        )
        await worker.async_run()
        await worker.close()
    finally:
        await pool.delete(queue)
        await pool.aclose()
    starts = sorted(STARTS)
    rate = (len(starts) - 1) / (starts[-1] - starts[0]) if len(starts) > 1 else 0.0
    return {"rate": rate, "done": len(starts)}


if __name__ == "__main__":
    logging.disable(logging.CRITICAL)  # arq logs every job
    url, concurrency, count, sleep = sys.argv[1:5]
    print(json.dumps(asyncio.run(main(url, int(concurrency), int(count), float(sleep)))))
