"""The supervisor's keeper thread: beats for its live children, ends for the dead ones.

One thread refreshes every ``Liveness`` the supervisor holds (``asynctask.liveness``),
each every ``interval`` seconds, and runs each ``end()`` it is handed. It runs no task
code, so nothing stops it but the backend: a beat that fails (a dropped connection, a
server restarting) is tried again at the next interval on a new connection, which the
transport's own retry gives. The supervisor's loop never waits on the backend: it only
hands liveness objects to this thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass

from asynctask.errors import AsynctaskError
from asynctask.liveness import Liveness

logger = logging.getLogger("asynctask.supervisor")

#: tries of one ``end()`` before its tasks are left to the transport's own recovery
END_TRIES = 20


@dataclass
class _End:
    liveness: Liveness
    started: frozenset[str] | None
    finished: frozenset[str] = frozenset()
    tries: int = 0


class Keepers:
    """Keeps the liveness of the supervisor's children from one daemon thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._beating: dict[int, tuple[Liveness, float]] = {}  # id -> (liveness, next beat)
        self._ends: list[_End] = []
        self._failing: set[int] = set()  # liveness ids whose last beat failed (logged once)
        self._thread = threading.Thread(target=self._run, name="asynctask-keepers", daemon=True)
        self._thread.start()

    def keep(self, liveness: Liveness) -> None:
        """Start beating for ``liveness`` (its first beat comes at once)."""
        with self._lock:
            self._beating[id(liveness)] = (liveness, 0.0)
        self._wake.set()

    def end(
        self, liveness: Liveness, started: Collection[str] | None, finished: Collection[str] = ()
    ) -> None:
        """Stop beating for ``liveness`` and hand its tasks back (``Liveness.end``)."""
        begun = None if started is None else frozenset(started)
        with self._lock:
            self._beating.pop(id(liveness), None)
            self._failing.discard(id(liveness))
            self._ends.append(_End(liveness, begun, frozenset(finished)))
        self._wake.set()

    def close(self, timeout: float = 10.0) -> None:
        """Run the pending ends (within ``timeout``), then stop the thread."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            # Cleared before the state is read: a keep() or end() from now on wakes the
            # wait below at once (cleared after it, a first beat could wait 5 s).
            self._wake.clear()
            self._run_ends()
            if self._stop.is_set():
                return
            now = time.monotonic()
            with self._lock:
                due = [(key, lv) for key, (lv, at) in self._beating.items() if at <= now]
            for key, liveness in due:
                self._beat(key, liveness)
            with self._lock:
                waits = [at for _, at in self._beating.values()]
                pending = bool(self._ends)
            timeout = 0.2 if pending else (min(waits) - time.monotonic() if waits else 5.0)
            self._wake.wait(max(0.0, timeout))

    def _beat(self, key: int, liveness: Liveness) -> None:
        try:
            liveness.beat()
            failed = False
        except AsynctaskError as exc:
            failed = True
            if key not in self._failing:
                self._failing.add(key)
                logger.warning(
                    "Could not refresh the liveness of %r (%s); trying again every %g s",
                    liveness,
                    exc,
                    liveness.interval / 4,
                )
        if not failed and key in self._failing:
            self._failing.discard(key)
            logger.warning("Refreshed the liveness of %r again", liveness)
        # After a failure, try again sooner: a restarted server is back within the bound.
        pause = liveness.interval / (4 if failed else 1)
        with self._lock:
            if key in self._beating:
                self._beating[key] = (liveness, time.monotonic() + pause)

    def _run_ends(self) -> None:
        with self._lock:
            ends, self._ends = self._ends, []
        retry: list[_End] = []
        for item in ends:
            try:
                handed = item.liveness.end(item.started, item.finished)
            except AsynctaskError as exc:
                item.tries += 1
                if item.tries < END_TRIES and not self._stop.is_set():
                    retry.append(item)
                else:
                    logger.warning(
                        "Could not hand back the tasks of %r (%s); they come back with the "
                        "transport's recovery",
                        item.liveness,
                        exc,
                    )
                continue
            if handed:
                logger.info("Handed back %d tasks of %r", handed, item.liveness)
        if retry:
            with self._lock:
                self._ends[:0] = retry
