"""The chaos suite's worker, registered with ``--import chaos.workers``.

``chaos_task`` sleeps the payload's ``ms`` milliseconds and notes its start and its end in
the ledger named by ``$CHAOS_LEDGER`` (see ``chaos.ledger``). A payload with ``"poison":
true`` raises every time, so it must end in the failed store. The liveness scenarios
(``chaos.liveness``) add ``"gil": S`` (hold the GIL for S seconds in one C call: no other
thread of the child runs meanwhile) and ``"die": true`` (SIGKILL its own child, every time).
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from typing import Any

from asynctask import AsyncTaskWorker
from chaos import ledger


class PoisonError(RuntimeError):
    """What a poison task raises, every time."""


class ChaosTask(AsyncTaskWorker):
    """Sleeps ``ms`` milliseconds; records start and completion with the attempt number."""

    name = "chaos_task"
    #: one task reserved at a time: the duplicate bound of ``chaos.counts`` assumes it
    prefetch = 1
    max_retries = 3
    # quick retries: poison reaches the failed store within a second or two
    retry_backoff = 0.1

    def __init__(self) -> None:
        super().__init__()
        self._fd: int | None = None

    def setup(self) -> None:
        """Open the ledger once per child."""
        path = os.environ[ledger.LEDGER_VARIABLE]
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def process(self, payload: dict[str, Any]) -> None:
        """Sleep, then record that the task completed (or raise, for poison)."""
        assert self._fd is not None
        assert self.delivery is not None
        n, attempt = int(payload["n"]), self.delivery.attempt
        ledger.append(self._fd, "start", n, attempt, time.time())
        if payload.get("poison"):
            ledger.append(self._fd, "raise", n, attempt, time.time())
            raise PoisonError(f"poison task {n} fails every time")
        if payload.get("die"):
            os.kill(os.getpid(), signal.SIGKILL)
        if payload.get("gil"):
            # ctypes.PyDLL keeps the GIL through the call: a long regex or C extension
            ctypes.PyDLL(None).sleep(int(payload["gil"]))
        time.sleep(float(payload.get("ms", 0)) / 1000)
        ledger.append(self._fd, "done", n, attempt, time.time())

    def teardown(self) -> None:
        """Close the ledger."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
