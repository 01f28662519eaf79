"""What the pages and ``/api/`` show, as JSON-ready dicts, read through the public
``Transport`` API only.

Every function here blocks on the backend; the app runs them in a worker thread (a
transport is safe to share between threads). Nothing reads a whole store: waiting tasks
come through ``peek``, tasks in flight through ``in_flight`` and failed ones through
``failed_tasks``, a page of ``PAGE`` each from an ``offset``, with where the previous and
next pages start.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from asynctask.errors import NotSupportedError
from asynctask.settings import SETTINGS, Settings
from asynctask.transport import COUNT_NAMES, QueueStats, Transport
from asynctask.uri import redact

#: tasks listed per page (waiting, failed)
PAGE = 100


def counts(stats: QueueStats) -> dict[str, Any]:
    """A queue's counts (None where the transport cannot tell), and the names of those
    that are estimates (``QueueStats.estimated``: pgsql above 10,000 per count)."""
    return {
        "name": stats.name,
        **{name: getattr(stats, name) for name in COUNT_NAMES},
        "estimated": list(stats.estimated),
    }


def queues(transport: Transport, rates: Any) -> dict[str, Any]:
    """Every queue with its counts, rates and the age of its oldest ready task."""
    now = time.time()
    rows = []
    for stats in transport.queues():
        # one more call per queue, so only where something is ready
        oldest = transport.oldest_ready(stats.name) if stats.ready else None
        per_second = rates.per_second(stats.name)
        rows.append(
            {
                **counts(stats),
                "processed_per_second": None if per_second is None else per_second[0],
                "failed_per_second": None if per_second is None else per_second[1],
                "oldest_ready_age": None if oldest is None else max(0.0, now - oldest),
            }
        )
    return {"transport": transport.safe_uri, "rates": rates.describe(), "queues": rows}


def pages(offset: int, limit: int, shown: int, total: int | None) -> dict[str, int | None]:
    """Where the previous and next pages of a listing start (None: there is none).

    A next page exists when this one is full and the count (where the transport gives
    one) says more follow; the previous one starts ``limit`` earlier, never below 0.
    """
    more = shown == limit and limit > 0 and (total is None or total > offset + shown)
    return {
        "offset": offset,
        "previous_offset": max(0, offset - limit) if offset > 0 and limit > 0 else None,
        "next_offset": offset + shown if more else None,
    }


def _listed(read: Callable[[], list[Any]]) -> tuple[list[dict[str, Any]] | None, str | None]:
    """A listing as dicts, or ``(None, why)`` where the transport cannot give it."""
    try:
        return [asdict(task) for task in read()], None
    except NotSupportedError as exc:
        return None, str(exc)


def queue(transport: Transport, name: str, limit: int = PAGE, offset: int = 0) -> dict[str, Any]:
    """One queue: its counts, a page of its waiting tasks (``offset`` on) and the first
    page of its tasks in flight, where the backend can list them without taking them."""
    stats = transport.queue_stats(name)
    waiting, why = _listed(lambda: transport.peek(name, limit=limit, offset=offset))
    held, held_why = _listed(lambda: transport.in_flight(name, limit=limit))
    return {
        "queue": counts(stats),
        "waiting": waiting,
        "waiting_unlisted": why,
        "waiting_pages": pages(offset, limit, len(waiting or []), stats.ready),
        "in_flight": held,
        "in_flight_unlisted": held_why,
        "in_flight_pages": pages(0, limit, len(held or []), stats.in_flight),
        "limit": limit,
        "oldest_ready": transport.oldest_ready(name),
    }


def in_flight(
    transport: Transport, name: str, limit: int = PAGE, offset: int = 0
) -> dict[str, Any]:
    """A page of the tasks consumers hold (who, since when), or why they cannot be
    listed."""
    stats = transport.queue_stats(name)
    held, why = _listed(lambda: transport.in_flight(name, limit=limit, offset=offset))
    return {
        "queue": counts(stats),
        "in_flight": held,
        "in_flight_unlisted": why,
        "in_flight_pages": pages(offset, limit, len(held or []), stats.in_flight),
        "limit": limit,
    }


def failed(transport: Transport, name: str, limit: int = PAGE, offset: int = 0) -> dict[str, Any]:
    """A page of the failed tasks of a queue, oldest first, and how many there are."""
    stats = transport.queue_stats(name)
    tasks = [asdict(task) for task in transport.failed_tasks(name, limit=limit, offset=offset)]
    return {
        "queue": counts(stats),
        "failed": tasks,
        "failed_pages": pages(offset, limit, len(tasks), stats.failed),
        "limit": limit,
    }


def task(transport: Transport, task_id: str) -> dict[str, Any] | None:
    """A task's status by id (DESIGN.md section 6), or None when the store does not know
    it. Raises ``StatusNotKept`` (naming ``asynctask_state``) where no status is kept."""
    found = transport.status(task_id)
    return None if found is None else found.to_dict()


def schedules(settings: Settings) -> list[dict[str, Any]]:
    """The entries of ``asynctask_scheduled_workers`` with their next fire times."""
    from asynctask.scheduler import next_fire_times

    return next_fire_times(settings)


def plugins(settings: Settings) -> dict[str, Any]:
    """Installed transports and workers with their distributions, broken plugins, and
    every installed asynctask distribution (plugins that only add hooks or commands)."""
    from asynctask.cli.common import installed_distributions
    from asynctask.cli.pluginlist import plugin_rows
    from asynctask.plugins import load_plugins

    return {
        "plugins": plugin_rows(load_plugins(settings.imports)),
        "distributions": [
            {"name": name, "version": version} for name, version in installed_distributions()
        ],
    }


def settings_rows(settings: Settings) -> list[dict[str, Any]]:
    """The effective settings and where each came from, every password hidden."""
    rows = []
    for name in SETTINGS:
        shown = settings.describe(name)
        if name == "asynctask_transport" and settings.values[name] is None:
            shown = redact(settings.transport) + " (embedded default)"
        rows.append({"name": name, "value": shown, "source": settings.sources[name]})
    return rows
