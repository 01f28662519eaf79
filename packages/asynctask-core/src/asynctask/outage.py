"""How an outage of the backend is told: when it starts, once a minute while it lasts,
and when it ends (DESIGN.md section 2, "Reconnects").

Producers (``Transport._call``), consumers and the worker run loop each meet outages;
they all tell them through an ``OutageReport`` so the log reads the same everywhere. The
logger ``asynctask.outage`` keeps its own level (INFO), so ``-q``, which hides task logs,
does not hide an unreachable backend.
"""

from __future__ import annotations

import logging
import threading
import time

#: the logger of outage reports; ``setup_logging`` leaves it at INFO even under -q
LOGGER_NAME = "asynctask.outage"
logger = logging.getLogger(LOGGER_NAME)

#: seconds between two "still unreachable" lines of one outage
REMIND_EVERY = 60.0


class OutageReport:
    """The log lines of one backend's outages, safe to call from several threads."""

    def __init__(self, what: str, remind_every: float = REMIND_EVERY) -> None:
        self.what = what
        self.remind_every = remind_every
        self._lock = threading.Lock()
        self._since: float | None = None
        self._reminded = 0.0

    @property
    def in_outage(self) -> bool:
        """Whether an outage was reported and has not ended yet."""
        return self._since is not None

    def lasted(self) -> float:
        """Seconds since the current outage began (0 when there is none)."""
        since = self._since
        return 0.0 if since is None else time.monotonic() - since

    def failed(self, exc: BaseException) -> None:
        """The backend could not be reached: log the start, or a reminder once a minute."""
        now = time.monotonic()
        with self._lock:
            if self._since is None:
                self._since = self._reminded = now
                logger.error("%s: backend unreachable (%s); waiting for it", self.what, exc)
            elif now - self._reminded >= self.remind_every:
                self._reminded = now
                logger.error(
                    "%s: backend still unreachable after %.0f s (%s); still waiting",
                    self.what,
                    now - self._since,
                    exc,
                )

    def ok(self) -> None:
        """The backend answered: log the end of an outage, if one was logged."""
        if self._since is None:
            return
        with self._lock:
            since, self._since = self._since, None
        if since is not None:  # another thread may have told the end first
            lasted = time.monotonic() - since
            logger.warning("%s: backend reachable again after %.1f s", self.what, lasted)
