"""The supervisor's cancel watch: which running tasks were cancelled (DESIGN.md section 6).

``cancel(id)`` of a task that a child of ``asynctask workers`` is running only writes
``cancelled`` in the state store; Python cannot stop the thread that runs it. The
supervisor knows which tasks each child has started (the child reports them,
``asynctask.reports``), so this thread asks the store, every ``CANCEL_POLL`` seconds and
only while some task runs, for the statuses of those ids, in one call. A ``cancelled``
one is handed to the supervisor's loop, which replaces its child after a short grace
(``asynctask.supervisor``). The task is not retried: when its reservation comes back,
the next ``start()`` finds it cancelled and drops it.

It runs no task code and never blocks the supervisor's loop: the loop publishes a
snapshot of the running ids and reads what was found; the wake-up is a callback (a
write on the loop's wake pipe).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from asynctask.errors import AsynctaskError
from asynctask.status import StatusNotKept
from asynctask.transport import Transport

logger = logging.getLogger("asynctask.supervisor")

#: seconds between two looks at the running tasks' statuses: with ``CANCEL_GRACE`` (in
#: ``asynctask.supervisor``), a cancelled task's child is gone within a second
CANCEL_POLL = 0.25


class CancelWatch:
    """Polls the statuses of the running tasks for ``cancelled``; see the module docstring."""

    def __init__(self, transport: Transport, wake: Callable[[], None]) -> None:
        self.transport = transport
        self._wake = wake
        self._lock = threading.Lock()
        self._running: Mapping[int, frozenset[str]] = {}
        self._found: set[str] = set()
        self._stop = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="asynctask-cancels", daemon=True)
        self._thread.start()

    def watch(self, running: Mapping[int, frozenset[str]]) -> None:
        """The ids each slot's child runs now (replaced whole: the thread reads a
        snapshot, never a set the loop is changing)."""
        self._running = running

    def take(self) -> set[str]:
        """The running ids found cancelled since the last call."""
        with self._lock:
            found, self._found = self._found, set()
        return found

    def close(self) -> None:
        """Stop the thread."""
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        try:
            # Found now, not at the first running task: the store of asynctask_state is
            # another transport, whose first use (imports, a connection) takes seconds.
            store = self.transport.state()
        except StatusNotKept:
            logger.debug("No task status kept: cancel of running tasks is not watched")
            return
        except AsynctaskError as exc:
            logger.warning("Cannot watch running tasks for cancels: %s", exc)
            return
        while not self._stop.wait(CANCEL_POLL):
            ids = sorted({i for ids in self._running.values() for i in ids})
            if not ids:
                continue
            try:
                statuses = self.transport._call(store.statuses, ids)
            except AsynctaskError as exc:
                if not self._failing:
                    self._failing = True
                    logger.warning("Could not read the running tasks' statuses: %s", exc)
                continue
            self._failing = False
            cancelled = {s.id for s in statuses if s is not None and s.state == "cancelled"}
            if cancelled:
                with self._lock:
                    self._found |= cancelled
                self._wake()
