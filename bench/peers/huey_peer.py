"""Huey: ``RedisHuey`` on Redis, ``SqliteHuey`` on files, by the URL (``redis://`` or a path).

Production settings for durability, from Huey's docs: on files, ``SqliteHuey`` with
``fsync=True`` (SQLite's ``synchronous=FULL``; Huey's ``FileHuey`` says it is not for
production: one lock around every operation and no fsync), in a database file under the
bench's scratch folder beside ours; on Redis, ``RedisHuey`` with its defaults (a blocking
pop; Huey has no acknowledgement, so a task taken by a consumer that dies is lost, which
our at-least-once delivery pays for and it does not). Results on (Huey's default; a
``None`` result is not stored). The worker: ``huey_consumer MODULE.HUEY -k process -w 1``
(one worker process) with periodic tasks off.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from bench.peers import common

MODULE = "bench.peers.huey_peer"


def _huey(url: str, queue: str) -> Any:
    if url.startswith("redis"):
        from huey import RedisHuey  # type: ignore[import-not-found,unused-ignore]

        return RedisHuey(queue, url=url)
    from huey import SqliteHuey  # type: ignore[import-not-found,unused-ignore]

    return SqliteHuey(queue, filename=str(Path(url) / f"{queue}.db"), fsync=True)


def noop(n: int, sent: float) -> None:
    """The no-op task."""
    common.note({"n": n, "sent": sent})


HUEY: Any = None
if common.QUEUE_VARIABLE in os.environ:  # imported by the consumer
    HUEY = _huey(os.environ[common.URL_VARIABLE], os.environ[common.QUEUE_VARIABLE])
    HUEY.task()(noop)


def drain(url: str, count: int, folder: Path) -> dict[str, Any]:
    """Enqueue ``count`` calls of the task, then run ``huey_consumer`` until all started."""
    queue = common.queue_name("huey")
    if not url.startswith("redis"):
        url = str(folder)
    huey = _huey(url, queue)
    task = huey.task()(noop)
    try:
        for payload in common.payloads(count):
            task(payload["n"], payload["sent"])
        command = [common.tool("huey_consumer"), f"{MODULE}.HUEY", "-k", "process", "-w", "1"]
        command.append("--no-periodic")
        result = common.run_worker(command, url, queue, count, folder, stop=signal.SIGINT)
    finally:
        huey.storage.flush_all()
    result["settings"] = "RedisHuey" if url.startswith("redis") else "SqliteHuey, fsync=True"
    return result


if __name__ == "__main__":
    from bench.peers.huey_peer import drain as named  # the task's name is its module's

    common.main(named)
