"""Checking ``asynctask_scheduled_workers`` entries (the scheduler itself runs them)."""

from __future__ import annotations

from typing import Any


def check_schedules(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the entries; full checking of cron fields arrives with the scheduler."""
    return entries
