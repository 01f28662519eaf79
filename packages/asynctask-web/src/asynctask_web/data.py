"""What the pages and ``/api/`` show, as JSON-ready dicts, read through the public
``Transport`` API only.

Every function here blocks on the backend; the app runs them in a worker thread (a
transport is safe to share between threads). Nothing reads a whole store: waiting tasks
come through ``peek`` and failed ones through ``failed_tasks``, a page of ``PAGE`` each.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from asynctask.errors import NotSupportedError
from asynctask.settings import SETTINGS, Settings
from asynctask.transport import COUNT_NAMES, QueueStats, Transport
from asynctask.uri import redact

#: tasks listed per page (waiting, failed)
PAGE = 100


def counts(stats: QueueStats) -> dict[str, Any]:
    """A queue's counts (None where the transport cannot tell)."""
    return {"name": stats.name, **{name: getattr(stats, name) for name in COUNT_NAMES}}


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


def queue(transport: Transport, name: str, limit: int = PAGE) -> dict[str, Any]:
    """One queue: its counts and its first waiting tasks (when the backend can list
    them without taking them)."""
    stats = transport.queue_stats(name)
    try:
        waiting: list[dict[str, Any]] | None = [
            asdict(task) for task in transport.peek(name, limit=limit)
        ]
        why = None
    except NotSupportedError as exc:
        waiting, why = None, str(exc)
    return {
        "queue": counts(stats),
        "waiting": waiting,
        "waiting_unlisted": why,
        "limit": limit,
        "oldest_ready": transport.oldest_ready(name),
    }


def failed(transport: Transport, name: str, limit: int = PAGE) -> dict[str, Any]:
    """The first failed tasks of a queue, oldest first, and how many there are."""
    stats = transport.queue_stats(name)
    tasks = [asdict(task) for task in transport.failed_tasks(name, limit=limit)]
    return {"queue": counts(stats), "failed": tasks, "limit": limit}


def task(transport: Transport, task_id: str) -> dict[str, Any] | None:
    """A task's status by id (DESIGN.md section 6), or None when the store does not know
    it. Raises ``StatusNotKept`` (naming ``asynctask_state``) where no status is kept."""
    found = transport.status(task_id)
    return None if found is None else asdict(found)


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
