"""Small helpers for tests that watch other processes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asynctask_testworkers.workers import read_ledger


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Wait until ``predicate()`` is true (checking every 50 ms); fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def events(ledger: Path, event: str) -> list[dict[str, Any]]:
    return [e for e in read_ledger(str(ledger)) if e["event"] == event]
