"""The cron scheduler of ``asynctask workers --scheduler``.

Each entry of ``asynctask_scheduled_workers`` gets an APScheduler 3 ``CronTrigger``. A
firing submits the entry's payload to its scheduled queue ``scheduled_<name>``, which
every ``asynctask workers`` serves with a supervised child. Before it submits, a
scheduler claims the firing (entry name, fire time) through ``Transport.claim``, an
atomic primitive of the backend, so N schedulers submit each firing exactly once.

APScheduler 3 does not hand the fire time to the job, so the job reads it from the
trigger: the latest fire time not after now. Every scheduler computes the same one.
"""

from __future__ import annotations

import contextlib
import logging
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from asynctask.child import ChildSpec
from asynctask.command import CommandWorker
from asynctask.plugins import Registry
from asynctask.schedules import build_trigger
from asynctask.settings import Settings
from asynctask.uri import redact

logger = logging.getLogger("asynctask.scheduler")

#: seconds a firing may run late and still be submitted (APScheduler's default of 1 s
#: drops firings on a busy machine); later ones are coalesced into one
MISFIRE_GRACE = 60
#: seconds a claim on a firing is kept: longer than the grace, so no late scheduler fires twice
CLAIM_TTL = 3600.0


def scheduled_specs(settings: Settings, imports: list[str], quiet: bool) -> list[ChildSpec]:
    """One child per schedule entry, on its scheduled queue."""
    return [
        ChildSpec(
            queue=entry["queue"],
            worker=entry["worker"] or CommandWorker.name,
            settings=settings.raw,
            sources=settings.sources,
            imports=imports,
            parent_pid=os.getpid(),
            quiet=quiet,
        )
        for entry in settings.schedules
    ]


def latest_fire_time(
    trigger: Any, now: datetime, horizon: float = MISFIRE_GRACE
) -> datetime | None:
    """The trigger's latest fire time in ``(now - horizon, now]``, or None."""
    fire = trigger.get_next_fire_time(None, now - timedelta(seconds=horizon))
    last = None
    while fire is not None and fire <= now:
        last = fire
        fire = trigger.get_next_fire_time(fire, fire + timedelta(microseconds=1))
    return last


def firing_key(entry: dict[str, Any], fire_time: datetime) -> str:
    """The name of one firing, the same in every scheduler."""
    return f"schedule:{entry['name']}:{fire_time.astimezone(UTC).isoformat()}"


class ScheduleRunner:
    """Runs the schedules in a background thread of the supervisor."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self._scheduler: Any = None

    def fire(self, entry: dict[str, Any], trigger: Any, now: datetime | None = None) -> bool:
        """Submit the firing of ``entry`` due at ``now`` if this scheduler wins its claim."""
        from asynctask.api import get_transport

        fire_time = latest_fire_time(trigger, now or datetime.now(trigger.timezone))
        if fire_time is None:
            return False
        transport = get_transport(self.settings.transport)
        key = firing_key(entry, fire_time)
        if not transport.claim(key, CLAIM_TTL):
            logger.debug("Firing %s was claimed by another scheduler", key)
            return False
        queue = entry["queue"]
        if entry["skip_if_pending"]:
            stats = transport.queue_stats(queue)
            if (stats.ready or 0) + (stats.delayed or 0) > 0:
                logger.info("Skipping firing %s: its previous task is still waiting", key)
                return False
        payload = {"schedule": entry["name"]} if entry["command"] else entry["payload"]
        task_id = transport.submit_task(queue, payload)
        logger.info("Submitted firing %s as task %s", key, task_id)
        return True

    def _job(self, entry: dict[str, Any], trigger: Any) -> None:
        try:
            self.fire(entry, trigger)
        except Exception:
            logger.exception(
                "Firing of schedule %r failed; the next one will be tried", entry["name"]
            )

    def start(self) -> None:
        """Start the scheduler thread."""
        from apscheduler.schedulers.background import BackgroundScheduler

        scheduler = BackgroundScheduler(
            job_defaults={"coalesce": True, "misfire_grace_time": MISFIRE_GRACE, "max_instances": 1}
        )
        for entry in self.settings.schedules:
            trigger = build_trigger(entry)
            what = entry["worker"] or entry["command"]
            logger.info("Scheduling %r for %s (queue %s)", what, trigger, entry["queue"])
            scheduler.add_job(self._job, trigger=trigger, args=(entry, trigger), id=entry["name"])
        scheduler.start()
        self._scheduler = scheduler

    def stop(self) -> None:
        """Stop firing (idempotent)."""
        if self._scheduler is not None:
            from apscheduler.schedulers import SchedulerNotRunningError

            with contextlib.suppress(SchedulerNotRunningError):
                self._scheduler.shutdown(wait=False)
            self._scheduler = None


def next_fire_times(settings: Settings) -> list[dict[str, Any]]:
    """Each entry with its next fire time, for ``asynctask schedule``."""
    rows = []
    for entry in settings.schedules:
        trigger = build_trigger(entry)
        now = datetime.now(trigger.timezone)
        upcoming = trigger.get_next_fire_time(None, now)
        fields = {
            k: entry[k]
            for k in entry
            if k
            not in (
                "payload",
                "queue",
                "command",
                "worker",
                "name",
                "skip_if_pending",
                "timeout",
                "env",
            )
        }
        rows.append(
            {
                "name": entry["name"],
                "runs": entry["worker"] or [redact(arg) for arg in entry["command"]],
                "queue": entry["queue"],
                "schedule": fields,
                "next": None if upcoming is None else upcoming.isoformat(),
            }
        )
    return rows
