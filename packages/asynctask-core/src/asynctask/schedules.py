"""Schedule entries of ``asynctask_scheduled_workers``: checked when the settings load.

Each entry names exactly one of ``worker`` or ``command``, at least one cron field, and
is checked by building its APScheduler ``CronTrigger``, so a bad field stops start-up
with the entry's position, the field and the value (the original found bad cron strings
only when the scheduler started, and ignored ``start_date``/``end_date``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from asynctask.validation import QUEUE_NAME_RULE, check_payload, is_valid_queue_name

CRON_FIELDS = ("year", "month", "day", "week", "day_of_week", "hour", "minute", "second")
DATE_FIELDS = ("start_date", "end_date", "timezone")
OTHER_FIELDS = ("worker", "command", "name", "payload", "skip_if_pending")
ALLOWED = (*OTHER_FIELDS, *CRON_FIELDS, *DATE_FIELDS)
#: the queue prefix of scheduled queues
PREFIX = "scheduled_"


class ScheduleError(ValueError):
    """A schedule entry that is not valid; the message names its position and field."""


def build_trigger(entry: Mapping[str, Any]) -> Any:
    """The APScheduler ``CronTrigger`` of a (checked) entry."""
    from apscheduler.triggers.cron import CronTrigger

    fields = {k: entry[k] for k in (*CRON_FIELDS, *DATE_FIELDS) if entry.get(k) is not None}
    return CronTrigger(**fields)


def _check_entry(position: int, raw: Mapping[str, Any]) -> dict[str, Any]:
    where = f"entry #{position}"
    unknown = sorted(set(raw) - set(ALLOWED))
    if unknown:
        raise ScheduleError(f"{where}: unknown fields {unknown}; allowed: {', '.join(ALLOWED)}")
    worker, command = raw.get("worker"), raw.get("command")
    if (worker is None) == (command is None):
        raise ScheduleError(f"{where}: give exactly one of 'worker' or 'command'")
    if worker is not None and (not isinstance(worker, str) or not worker):
        raise ScheduleError(f"{where}: 'worker' must name a worker, got {worker!r}")
    if command is not None:
        if not (isinstance(command, list) and command and all(isinstance(a, str) for a in command)):
            raise ScheduleError(
                f"{where}: 'command' must be a list of arguments (no shell), "
                f'e.g. ["python", "-m", "myapp.cleanup"]; got {command!r}'
            )
        if raw.get("name") is None:
            raise ScheduleError(f"{where}: a 'command' entry needs a 'name'")
    name = raw.get("name", worker)
    if not isinstance(name, str) or not is_valid_queue_name(PREFIX + name):
        raise ScheduleError(
            f"{where}: name {name!r} does not make a valid queue name "
            f"{PREFIX}<name>: use {QUEUE_NAME_RULE}"
        )
    if not any(raw.get(k) is not None for k in CRON_FIELDS):
        raise ScheduleError(f"{where}: give at least one time field of {', '.join(CRON_FIELDS)}")
    for key in (*CRON_FIELDS, *DATE_FIELDS):
        value = raw.get(key)
        if value is None:
            continue
        if key == "timezone" or key in DATE_FIELDS:
            if not isinstance(value, str):
                raise ScheduleError(f"{where}: field {key!r} must be a string, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int | str):
            raise ScheduleError(
                f"{where}: field {key!r} must be a number or a cron string, got {value!r}"
            )
        try:
            build_trigger({key: value} if key in CRON_FIELDS else {"second": 0, key: value})
        except Exception as exc:  # APScheduler raises ValueError, TypeError and others
            raise ScheduleError(f"{where}: field {key!r} = {value!r} is not valid: {exc}") from exc
    try:
        trigger = build_trigger(raw)
        never = trigger.get_next_fire_time(None, datetime.now(trigger.timezone)) is None
    except Exception as exc:
        raise ScheduleError(f"{where}: the schedule is not valid: {exc}") from exc
    if never:
        # An end_date in the past, or a date no calendar has (31 February): refusing it
        # now beats a scheduler that silently never fires.
        fields = {k: raw[k] for k in (*CRON_FIELDS, *DATE_FIELDS) if raw.get(k) is not None}
        raise ScheduleError(
            f"{where}: the schedule {json.dumps(fields, default=str)} can never fire "
            "(an end_date in the past, or a date that does not exist); fix or remove it"
        )
    try:
        payload = check_payload(raw.get("payload"))
    except ValueError as exc:
        raise ScheduleError(f"{where}: field 'payload': {exc}") from exc
    skip = raw.get("skip_if_pending", False)
    if not isinstance(skip, bool):
        raise ScheduleError(f"{where}: skip_if_pending must be true or false, got {skip!r}")
    entry = {k: raw[k] for k in (*CRON_FIELDS, *DATE_FIELDS) if raw.get(k) is not None}
    entry.update(
        worker=worker,
        command=command,
        name=name,
        payload=payload,
        skip_if_pending=skip,
        queue=PREFIX + name,
    )
    return entry


def check_schedules(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check every entry; return them normalised (``name``, ``queue``, ``payload`` filled)."""
    checked = [_check_entry(position, raw) for position, raw in enumerate(entries, 1)]
    seen: dict[str, int] = {}
    for position, entry in enumerate(checked, 1):
        name = entry["name"]
        if name in seen:
            raise ScheduleError(
                f"entries #{seen[name]} and #{position} are both named {name!r} (a name "
                "defaults to the worker's); give one of them another 'name'"
            )
        seen[name] = position
    return checked
