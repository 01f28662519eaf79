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
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from asynctask.errors import AsynctaskError, TransportUnavailable
from asynctask.outage import OutageReport

if TYPE_CHECKING:
    from asynctask.child import ChildSpec
    from asynctask.transport import Transport


class RunReport:
    """The report file the children write to, and the failed counts before the run."""

    def __init__(self) -> None:
        # Created by the first child that appends to it; removed by close().
        name = f"asynctask-run-{os.getpid()}-{os.urandom(4).hex()}.jsonl"
        self.path = os.path.join(tempfile.gettempdir(), name)
        self.queues: list[str] = []
        self.failed_before: dict[str, int | None] = {}
        self.outage = OutageReport("asynctask workers")
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def _watch(self, cls: type[Transport], uri: str) -> None:
        """Ask the backend every second until it answers: an outage at start is told when
        it starts, once a minute and when it ends, whatever the children say."""
        with cls(uri) as transport:
            while not self._stop.wait(1.0):
                try:
                    transport.check()
                except TransportUnavailable as exc:
                    self.outage.failed(exc)
                    continue
                except AsynctaskError:
                    return  # a refusal: the children meet it and stop the run
                self.outage.ok()
                return

    def start(self, transport: Transport, specs: Sequence[ChildSpec]) -> None:
        """Reach the backend once; note each queue's failed count.

        Raises ``TransportRefused`` (and other errors but an outage) for the caller to
        report; an outage is logged, and the children wait it out.
        """
        self.queues = sorted({spec.queue for spec in specs})
        try:
            transport.check()
        except TransportUnavailable as exc:
            self.outage.failed(exc)
            self._watcher = threading.Thread(
                target=self._watch, args=(type(transport), transport.uri), daemon=True
            )
            self._watcher.start()
            return
        for queue in self.queues:
            self.failed_before[queue] = transport.queue_stats(queue).failed

    def stop_watching(self) -> None:
        """Stop watching an outage at start (the run is over)."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(5)

    def close(self) -> None:
        """Stop watching; remove the report file."""
        self.stop_watching()
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
