"""Small helpers for tests that watch other processes."""

from __future__ import annotations

import logging
import subprocess
import threading
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from asynctask.runner import LoopOptions, run_loop
from asynctask.testing.supervised import wait_for
from asynctask.worker import AsyncTaskWorker
from asynctask_testworkers.workers import read_ledger
from chaos.private import free_port
from chaos.private_redis import launch_redis

__all__ = [
    "cancelled_while_running_story",
    "drain",
    "events",
    "free_port",
    "scrape",
    "start_redis_server",
    "total",
    "wait_for",
]


def events(ledger: Path, event: str) -> list[dict[str, Any]]:
    return [e for e in read_ledger(str(ledger)) if e["event"] == event]


def start_redis_server(
    port: int, args: Sequence[str], password: str | None
) -> subprocess.Popen[bytes]:
    """Start a redis-server of a test's own on 127.0.0.1:``port`` and wait until it answers
    (``chaos.private_redis``, the one starter of the tests and ``make chaos``)."""
    return launch_redis(port, args, password)


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample as {(name, sorted labels): value}; {} while nothing listens yet."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def total(samples, name, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def drain(worker: Any, transport: Any, queue: str, **options: Any) -> Any:
    """Run ``worker`` on ``queue`` in this process until the queue is drained."""
    from asynctask.runner import LoopOptions, run_loop

    return run_loop(
        worker, transport, queue, LoopOptions(halt_when_empty=True, wait=0.05, **options)
    )


class _Gated(AsyncTaskWorker):
    """Says it started, then returns a result once ``go`` is set."""

    name = "test_support_gated"
    started = threading.Event()
    go = threading.Event()

    def process(self, payload: Any) -> Any:
        self.started.set()
        self.go.wait(30)
        return {"would": "be the result"}


def cancelled_while_running_story(
    transport: Any, queue: str, caplog: Any, prefetch: int = 1
) -> None:
    """A task cancelled while it runs in this process's run loop (``process_queue``)
    stays cancelled, its result discarded, and the log says so (DESIGN.md section 6)."""
    # Given a task running in this process's run loop
    caplog.set_level(logging.WARNING)
    tid = transport.submit_task(queue, {})
    _Gated.started.clear()
    _Gated.go.clear()
    options = LoopOptions(max_tasks=1, prefetch=prefetch)
    loop = threading.Thread(target=run_loop, args=(_Gated(), transport, queue, options))
    loop.start()
    assert _Gated.started.wait(10)
    # When it is cancelled, then returns
    assert transport.cancel(tid) is True
    _Gated.go.set()
    loop.join(10)
    # Then it stays cancelled, its result discarded, and the log says so
    status = transport.status(tid)
    assert status is not None and (status.state, status.result) == ("cancelled", None)
    line = f"Task {tid} was cancelled while it ran; it stays cancelled and its result is discarded"
    assert line in caplog.text, caplog.text
