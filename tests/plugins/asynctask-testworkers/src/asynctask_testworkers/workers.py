"""Test workers. A payload names its ``ledger``: a file where each attempt appends a line.

A line is JSON: ``{"event": "start"|"done", "pid": ..., "payload": ..., "time": ...}``,
written with O_APPEND in one write, so lines from many processes never interleave.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from asynctask import AsyncTaskWorker


def record(payload: dict[str, Any], event: str, **extra: Any) -> None:
    """Append one ledger line for ``payload``."""
    ledger = payload.get("ledger")
    if not ledger:
        return
    line = json.dumps(
        {"event": event, "pid": os.getpid(), "payload": payload, "time": time.time(), **extra}
    )
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def read_ledger(path: str) -> list[dict[str, Any]]:
    """Every line of a ledger, in order."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class RecordWorker(AsyncTaskWorker):
    """Records the payload; sleeps ``seconds`` if given."""

    name = "test_record"
    retry_backoff = 0.2

    def process(self, payload: dict[str, Any]) -> None:
        record(payload, "start")
        if payload.get("seconds"):
            time.sleep(float(payload["seconds"]))
        record(payload, "done")


class FailWorker(AsyncTaskWorker):
    """Always raises, quickly retried."""

    name = "test_fail"
    max_retries = 2
    retry_backoff = 0.1

    def process(self, payload: dict[str, Any]) -> None:
        record(payload, "start")
        raise RuntimeError(f"failing on purpose: {payload.get('n')}")


class MixedWorker(AsyncTaskWorker):
    """Sleeps ``seconds``, then succeeds, or raises on every attempt if ``"fail": true``."""

    name = "test_mixed"
    max_retries = 2
    retry_backoff = 0.05

    def process(self, payload: dict[str, Any]) -> None:
        record(payload, "start")
        if payload.get("seconds"):
            time.sleep(float(payload["seconds"]))
        if payload.get("fail"):
            raise ValueError(f"failing on purpose: {payload.get('n')}")
        record(payload, "done")


class NoRetryWorker(AsyncTaskWorker):
    """Raises an exception it declares not worth retrying."""

    name = "test_no_retry"
    dont_retry = (KeyError,)

    def process(self, payload: dict[str, Any]) -> None:
        record(payload, "start")
        raise KeyError("missing")


class CrashOnceWorker(AsyncTaskWorker):
    """Kills its own process mid-task the first time it sees a payload (marker file)."""

    name = "test_crash_once"

    def process(self, payload: dict[str, Any]) -> None:
        record(payload, "start")
        marker = payload["marker"]
        if not os.path.exists(marker):
            with open(marker, "w") as f:
                f.write(str(os.getpid()))
            os._exit(1)
        record(payload, "done")


class SlowWorker(AsyncTaskWorker):
    """Sleeps ``seconds`` (default 2), then records it finished."""

    name = "test_slow"

    def process(self, payload: dict[str, Any]) -> None:
        record(payload, "start")
        time.sleep(float(payload.get("seconds", 2)))
        record(payload, "done")


class TimeoutWorker(AsyncTaskWorker):
    """Sleeps far past its one-second timeout."""

    name = "test_timeout"
    timeout = 1.0
    max_retries = 1
    retry_backoff = 0.1

    def process(self, payload: dict[str, Any]) -> None:
        record(payload, "start")
        time.sleep(60)
        record(payload, "done")


class RecycleWorker(AsyncTaskWorker):
    """Records its pid; its child is replaced after every two tasks."""

    name = "test_recycle"
    max_tasks_per_child = 2

    def process(self, payload: dict[str, Any]) -> None:
        record(payload, "done")


def hold_gil(seconds: float) -> None:
    """Sleep ``seconds`` in C *without* releasing the GIL (``ctypes.PyDLL`` keeps it).

    No other thread of the process runs meanwhile, and Python signal handlers wait: what
    a long regex, a numpy call or a C extension that forgets to release the GIL does.
    """
    import ctypes

    ctypes.PyDLL(None).sleep(int(seconds))


class GilHogWorker(AsyncTaskWorker):
    """Holds the GIL for ``seconds`` (default 6) in one C call, then records it finished."""

    name = "test_gil_hog"
    max_retries = 2
    retry_backoff = 0.1
    prefetch = 1

    def process(self, payload: dict[str, Any]) -> None:
        record(payload, "start")
        hold_gil(float(payload.get("seconds", 6)))
        record(payload, "done")


class PoisonWorker(AsyncTaskWorker):
    """Kills its own process (SIGKILL) on a payload with ``poison``; records the others.

    Its prefetch of 4 makes the innocent tasks behind a poison one ride in the same child.
    """

    name = "test_poison"
    retry_backoff = 0.1
    prefetch = 4

    def process(self, payload: dict[str, Any]) -> None:
        delivery = self.delivery
        record(payload, "start", attempt=delivery.attempt if delivery is not None else None)
        if payload.get("poison"):
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        if payload.get("seconds"):
            time.sleep(float(payload["seconds"]))
        record(payload, "done")
