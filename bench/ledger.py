"""The ledger: one line per task started, ``n sent started pid``, appended by workers.

Workers (ours in ``bench.workers``, the raw listeners in ``bench.wake``) write it; the
harness reads it to time a drain (first to last start) and latencies (``started - sent``).
Times are ``time.time()`` on one machine, so they compare across processes.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

#: the environment variable naming the ledger file for ``bench_noop`` workers
LEDGER_VARIABLE = "BENCH_LEDGER"


@dataclass(frozen=True)
class Entry:
    """One task started: its number, when it was sent, when ``process()`` began."""

    n: int
    sent: float
    started: float
    pid: int


def format_line(payload: Mapping[str, Any], started: float) -> bytes:
    """The ledger line for a payload ``{"n": ..., "sent": ...}`` started at ``started``."""
    return (
        f"{payload.get('n', -1)} {payload.get('sent', 0.0)!r} {started!r} {os.getpid()}\n".encode()
    )


def fresh(path: str) -> str:
    """``path``, with any ledger an earlier measure left there removed: writers append,
    and the names repeat within a transport's folder (the raw client's wake-ups of the
    latency step, the status step and pgsql's table rounds; a queue measured twice), so
    a measure would otherwise count the earlier one's lines as its own."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return path


def read(path: str) -> list[Entry]:
    """Every complete line of the ledger, in the order written."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read()
    except FileNotFoundError:
        return []
    entries = []
    for line in text.split("\n")[:-1]:  # the last piece is empty or a line being written
        n, sent, started, pid = line.split()
        entries.append(Entry(int(n), float(sent), float(started), int(pid)))
    return entries


class Follower:
    """Counts a ledger's lines as they come, reading only what is new."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.count = 0

    def poll(self) -> int:
        """The number of complete lines written so far."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return 0
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        self.count += chunk.count(b"\n", 0, end)
        return self.count

    def wait(self, count: int, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
        """Wait until ``count`` lines are written; raise ``TimeoutError`` naming the shortfall.

        ``alive`` is asked between looks: a dead writer ends the wait at once.
        """
        deadline = time.monotonic() + timeout
        while self.poll() < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.count} of {count} tasks started within {timeout:g} s")
            if not alive():
                raise RuntimeError(f"the workers exited after {self.count} of {count} tasks")
            time.sleep(0.01)
