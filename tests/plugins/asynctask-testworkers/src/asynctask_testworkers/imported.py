"""Workers found only through ``--import asynctask_testworkers.imported``."""

from __future__ import annotations

from typing import Any

from asynctask import AsyncTaskWorker
from asynctask_testworkers.workers import record


class ImportedWorker(AsyncTaskWorker):
    """Registered by importing this module."""

    name = "test_imported"

    def process(self, payload: dict[str, Any]) -> None:
        record(payload, "done", via="import")
