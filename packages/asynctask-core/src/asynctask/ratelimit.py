"""A sliding-window rate limit on processed tasks (``rate_max_calls`` per ``rate_period``).

It counts tasks that were processed, not polls: an idle worker spends nothing of its
budget (the original counted empty polls too).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque


class RateLimit:
    """At most ``max_calls`` tasks started in any ``period`` seconds."""

    def __init__(self, max_calls: int, period: float, name: str = "") -> None:
        if max_calls < 1 or not period > 0:
            raise ValueError(
                f"rate limit needs max_calls >= 1 and period > 0, got {max_calls}, {period}"
            )
        self.max_calls = max_calls
        self.period = period
        self.name = name
        self._starts: deque[float] = deque()
        self._logger = logging.getLogger("asynctask.ratelimit")

    def try_start(self) -> float:
        """Count one more task if it may start now (0.0); else the seconds until it may.

        For a loop that must not block while it waits (it has tasks to settle meanwhile).
        """
        now = time.monotonic()
        while self._starts and now - self._starts[0] >= self.period:
            self._starts.popleft()
        if len(self._starts) < self.max_calls:
            self._starts.append(now)
            return 0.0
        return max(self.period - (now - self._starts[0]), 0.001)

    def give_back(self) -> None:
        """Uncount the last start (``try_start`` counted it, then another limit said no)."""
        if self._starts:
            self._starts.pop()

    def wait(self, stop: threading.Event | None = None) -> None:
        """Block until one more task may start (or ``stop`` is set), then count it."""
        while True:
            now = time.monotonic()
            while self._starts and now - self._starts[0] >= self.period:
                self._starts.popleft()
            if len(self._starts) < self.max_calls:
                self._starts.append(now)
                return
            pause = self.period - (now - self._starts[0])
            self._logger.debug(
                "Rate limited on queue %s, sleeping for %f seconds", self.name, pause
            )
            if stop is not None:
                if stop.wait(pause):
                    return
            else:
                time.sleep(pause)
