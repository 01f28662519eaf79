"""A pluggy plugin that registers a worker through the ``asynctask`` hook."""

from __future__ import annotations

from typing import Any

from asynctask import AsyncTaskWorker, hookimpl
from asynctask.hookspecs import RegisterWorker
from asynctask_testworkers.workers import record


class HookWorker(AsyncTaskWorker):
    """Registered through ``asynctask_register_workers``."""

    name = "test_hooked"

    def process(self, payload: dict[str, Any]) -> None:
        record(payload, "done", via="hook")


@hookimpl
def asynctask_register_workers(register: RegisterWorker) -> None:
    """Register ``test_hooked``."""
    register(HookWorker)
