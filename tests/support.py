"""Small helpers for tests that watch other processes."""

from __future__ import annotations

import logging
import subprocess
import threading
import time
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
    "cancel_while_running_in_process",
    "drain",
    "events",
    "free_port",
    "killed_after_the_fail",
    "reserve_within",
    "scrape",
    "settle_through_restarts",
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


def reserve_within(consumer: Any, seconds: float = 10) -> Any:
    """The next task ``consumer`` gets within ``seconds`` (reserved a second at a time:
    on AMQP a task just published may take a moment to reach a new consumer)."""
    delivery = None
    deadline = time.monotonic() + seconds
    while delivery is None and time.monotonic() < deadline:
        delivery = consumer.reserve(1.0)
    assert delivery is not None, f"no task came within {seconds} s"
    return delivery


def drain(worker: Any, transport: Any, queue: str, **options: Any) -> Any:
    """Run ``worker`` on ``queue`` in this process until the queue is drained."""
    from asynctask.runner import LoopOptions, run_loop

    return run_loop(
        worker, transport, queue, LoopOptions(halt_when_empty=True, wait=0.05, **options)
    )


class _Gated(AsyncTaskWorker):
    """Says it started, then returns a result once ``go`` is set."""

    name = "test_gated"

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()
        self.go = threading.Event()

    def process(self, payload: Any) -> Any:
        self.started.set()
        self.go.wait(30)
        return {"would": "be the result"}


def cancel_while_running_in_process(
    transport: Any, queue: str, caplog: Any, prefetch: int = 1
) -> str:
    """The story of a task cancelled while it runs in this process's run loop
    (``process_queue``, reserving ``prefetch`` ahead), then returning a result: it stays
    cancelled, its result discarded, and the log says so (DESIGN.md section 6). Returns
    the task's id."""
    # Given a task running in this process's run loop
    caplog.set_level(logging.WARNING)
    tid = transport.submit_task(queue, {})
    worker = _Gated()
    options = LoopOptions(max_tasks=1, prefetch=prefetch)
    loop = threading.Thread(target=run_loop, args=(worker, transport, queue, options))
    loop.start()
    try:
        assert worker.started.wait(10)
        # When it is cancelled, then returns
        assert transport.cancel(tid) is True
    finally:
        worker.go.set()
        loop.join(10)
    # Then it stays cancelled, its result discarded, and the log says so
    status = transport.status(tid)
    assert status is not None and (status.state, status.result) == ("cancelled", None)
    assert (
        f"Task {tid} was cancelled while it ran; it stays cancelled and its result is "
        "discarded" in caplog.text
    ), caplog.text
    return tid


def settle_through_restarts(
    consumer: Any, held: list[Any], server: Any, result_json: str | None = None
) -> None:
    """Retry (60 s), fail and release the first three of four started ``held``
    deliveries, each call made while ``server`` (``stop()``/``start()``) restarts, then
    ack the fourth with ``result_json``: sent with the consumer's close, during one more
    restart. The stories of a transport whose settle calls must survive a restart."""
    settles = (
        lambda d: consumer.retry(d, delay=60, error="later"),
        lambda d: consumer.fail(d, "never"),
        consumer.release,
    )
    for settle in settles:
        _restarting(server, settle, held.pop(0))
    consumer.ack(held.pop(0), result_json)
    _restarting(server, consumer.close)


def _restarting(server: Any, call: Any, *args: Any) -> None:
    """``call(*args)`` while ``server`` is stopped and started again 0.3 s later; returns once
    it is started in full (else the next stop would miss it)."""
    server.stop()
    back = threading.Timer(0.3, server.start)
    back.start()
    call(*args)
    back.join()


#: a worker process whose one task raises (no retries): SIGKILLed right after its
#: consumer's ``fail`` (argv: the module and class whose ``fail`` it patches) moved the
#: task to the failed store, before the run loop writes ``failed`` to ``asynctask_state``
_KILLED_AFTER_THE_FAIL = """
import importlib, os, signal, sys
from asynctask import AsyncTaskWorker
from asynctask.runner import LoopOptions, run_loop
from asynctask.testing.contract import open_transport

uri, state, queue, where = sys.argv[1:5]
module, name = where.split(":")
cls = getattr(importlib.import_module(module), name)
real = cls.fail

def fail(*args, **kwargs):
    real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)

cls.fail = fail

class Raises(AsyncTaskWorker):
    name = "asynctask_tests_killed_after_the_fail"
    max_retries = 0

    def process(self, payload):
        raise ValueError("boom")

with open_transport(uri) as t:
    t.state_uri = state
    run_loop(Raises(), t, queue, LoopOptions(halt_when_empty=True))
"""


def killed_after_the_fail(uri: str, state: str, queue: str, consumer_class: str) -> None:
    """The failed window (issue 16, ``asynctask.status``) on the transport of ``uri``
    with its statuses in ``state``: a worker killed right after ``consumer_class``
    (``module:Class``) moved its task to the failed store, before ``failed``; then the
    task is in the failed store and reads ``failed``, and a ``wait`` returns it."""
    import sys

    from asynctask.testing.contract import open_transport

    with open_transport(uri) as t:
        t.state_uri = state
        tid = t.submit_task(queue, {"n": 1})
        script = [sys.executable, "-c", _KILLED_AFTER_THE_FAIL, uri, state, queue, consumer_class]
        assert subprocess.run(script, timeout=60).returncode == -9
        assert [f.id for f in t.failed_tasks(queue)] == [tid]
        found = t.status(tid)
        assert found is not None and found.state == "failed", found
        assert found.error is not None and "boom" in found.error
        assert t.wait(tid, timeout=5).state == "failed"
