"""The cron scheduler of ``asynctask workers --scheduler`` (built by the scheduler issue)."""

from __future__ import annotations

from typing import Any

from asynctask.child import ChildSpec
from asynctask.plugins import Registry
from asynctask.settings import Settings


def scheduled_specs(settings: Settings, imports: list[str], quiet: bool) -> list[ChildSpec]:
    """Children for the scheduled queues (none until the scheduler lands)."""
    return []


class ScheduleRunner:
    """Fires schedule entries (not built yet)."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry

    def start(self) -> None:
        """Start firing."""

    def stop(self) -> None:
        """Stop firing."""


_: Any = None
