"""The benchmark's no-op worker: notes when ``process()`` starts, and nothing else.

Registered with ``--import bench.workers``; ``bench_sleep`` is the async table's
I/O-bound worker. With ``BENCH_LEDGER`` set (the supervisor's
children inherit the environment), each task appends one line to that file: see
``bench.ledger``.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from asynctask import AsyncTaskWorker
from bench.ledger import LEDGER_VARIABLE, format_line

#: seconds each I/O-bound task of the async table waits
SLEEP = 0.05


class BenchNoopWorker(AsyncTaskWorker):
    """Does nothing with a task but note the time its ``process()`` started."""

    name = "bench_noop"

    def __init__(self) -> None:
        super().__init__()
        self._fd: int | None = None

    def setup(self) -> None:
        """Open the ledger once per child (O_APPEND: one write per line, never interleaved)."""
        path = os.environ.get(LEDGER_VARIABLE)
        self._fd = None if not path else os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def process(self, payload: dict[str, Any]) -> None:
        """Note the start time beside the payload's ``n`` and ``sent``."""
        started = time.time()
        if self._fd is not None:
            os.write(self._fd, format_line(payload, started))

    def teardown(self) -> None:
        """Close the ledger."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class BenchSleepWorker(BenchNoopWorker):
    """I/O-bound: notes its start, then ``await asyncio.sleep(SLEEP)``; many at once."""

    name = "bench_sleep"
    child_concurrency = 100

    async def process(self, payload: dict[str, Any]) -> None:  # type: ignore[override]
        """Note the start time, then wait like a network call would."""
        started = time.time()
        if self._fd is not None:
            os.write(self._fd, format_line(payload, started))
        await asyncio.sleep(SLEEP)


class BenchDemoWorker(AsyncTaskWorker):
    """Sleeps ``seconds``, then succeeds, or raises when ``fail`` (for the metrics chart)."""

    name = "bench_demo"
    max_retries = 2
    retry_backoff = 0.2

    def process(self, payload: dict[str, Any]) -> None:
        """Sleep, then fail on purpose when asked."""
        time.sleep(float(payload.get("seconds", 0.0)))
        if payload.get("fail"):
            raise RuntimeError("failing on purpose (bench_demo)")


class BenchCpuWorker(BenchNoopWorker):
    """``bench_noop`` that also notes the child's CPU time from its first task to its last.

    With ``BENCH_CPU`` set, ``teardown()`` appends ``tasks first_cpu last_cpu`` (seconds of
    ``time.process_time()``) to that file: the CPU a task costs in the child, start-up
    and idle waits left out, which a loaded machine changes far less than a rate.
    """

    name = "bench_cpu"

    def setup(self) -> None:
        """Open the ledger; start counting."""
        super().setup()
        self._first: float | None = None
        self._last = 0.0
        self._count = 0

    def process(self, payload: dict[str, Any]) -> None:
        """Note the start time, and the CPU time so far."""
        super().process(payload)
        now = time.process_time()
        if self._first is None:
            self._first = now
        self._last = now
        self._count += 1

    def teardown(self) -> None:
        """Write the CPU line, close the ledger."""
        super().teardown()
        path = os.environ.get("BENCH_CPU")
        if path and self._first is not None:
            with open(path, "a", encoding="ascii") as f:
                f.write(f"{self._count} {self._first!r} {self._last!r}\n")
