"""What ``asynctask workers`` checks before its children start and tells when they end.

Before: one call to the backend (``Transport.check``): a backend that refuses us ends
the command at once (exit 2); one that is away is reported and waited for by the
children. After a ``--halt-when-empty`` run: a summary per queue. Children append what
they processed to a report file; how many tasks reached the failed store is read from
the transport (its failed count now, minus the one before the run), so it counts every
way a task gets there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from asynctask.errors import AsynctaskError, TransportUnavailable
from asynctask.outage import LOGGER_NAME

if TYPE_CHECKING:
    from asynctask.child import ChildSpec
    from asynctask.transport import Transport

outage_log = logging.getLogger(LOGGER_NAME)


class RunReport:
    """The report file the children write to, and the failed counts before the run."""

    def __init__(self) -> None:
        fd, self.path = tempfile.mkstemp(prefix="asynctask-run-", suffix=".jsonl")
        os.close(fd)
        self.queues: list[str] = []
        self.failed_before: dict[str, int | None] = {}

    def start(self, transport: Transport, specs: Sequence[ChildSpec]) -> None:
        """Reach the backend once; note each queue's failed count.

        Raises ``TransportRefused`` (and other errors but an outage) for the caller to
        report; an outage is logged, and the children wait it out.
        """
        self.queues = sorted({spec.queue for spec in specs})
        try:
            transport.check()
        except TransportUnavailable as exc:
            outage_log.error(
                "asynctask workers: backend unreachable at start (%s); the workers wait for it", exc
            )
            return
        for queue in self.queues:
            self.failed_before[queue] = transport.queue_stats(queue).failed

    def close(self) -> None:
        """Remove the report file."""
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def _processed(self) -> dict[str, dict[str, int]]:
        totals = {q: {"processed": 0, "succeeded": 0} for q in self.queues}
        try:
            with open(self.path) as file:
                lines = file.read().splitlines()
        except OSError:
            lines = []
        for line in lines:
            try:
                row = json.loads(line)
                total = totals.setdefault(row["queue"], {"processed": 0, "succeeded": 0})
                total["processed"] += int(row["processed"])
                total["succeeded"] += int(row["succeeded"])
            except (ValueError, KeyError, TypeError):
                continue
        return totals

    def summary(self, cls: type[Transport], uri: str) -> list[dict[str, Any]]:
        """One row per queue: processed, succeeded, retried, failed (None: unknown)."""
        failed_after: dict[str, int | None] = {}
        try:
            with cls(uri) as transport:
                for queue in self.queues:
                    failed_after[queue] = transport.queue_stats(queue).failed
        except AsynctaskError as exc:
            logging.getLogger("asynctask.workers").warning(
                "cannot count failed tasks for the summary: %s", exc
            )
        rows = []
        for queue, total in sorted(self._processed().items()):
            before, after = self.failed_before.get(queue), failed_after.get(queue)
            failed = None if before is None or after is None else max(0, after - before)
            unsettled = total["processed"] - total["succeeded"]
            retried = None if failed is None else max(0, unsettled - failed)
            rows.append(
                {
                    "queue": queue,
                    "processed": total["processed"],
                    "succeeded": total["succeeded"],
                    "retried": retried,
                    "failed": failed,
                }
            )
        return rows


def summary_table(rows: list[dict[str, Any]]) -> str:
    """The summary as a table for people."""
    from asynctask.cli.common import count_text, table

    header = ["queue", "processed", "succeeded", "retried", "failed"]
    cells = [[row["queue"], *(count_text(row[h]) for h in header[1:])] for row in rows]
    return table(cells, header) if cells else "No queues."
