"""The chaos suite's worker, registered with ``--import chaos.workers``.

``chaos_task`` sleeps the payload's ``ms`` milliseconds and notes its start and its end in
the ledger named by ``$CHAOS_LEDGER`` (see ``chaos.ledger``). A payload with ``"poison":
true`` raises every time, so it must end in the failed store.
"""

from __future__ import annotations

import os
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
        time.sleep(float(payload.get("ms", 0)) / 1000)
        ledger.append(self._fd, "done", n, attempt, time.time())

    def teardown(self) -> None:
        """Close the ledger."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
