"""A prefetch sized from the tasks' run time, for transports whose consumer may resize it.

Why. A consumer's prefetch is a trade. Large, a drain of short tasks is not bound by
round trips; but a long task holds the tasks reserved behind it (other consumers idle
meanwhile, and a broker may time them out: RabbitMQ's ``consumer_timeout`` counts from
delivery). So when neither the worker class nor the queue entry sets ``prefetch``, a
transport whose default is an ``AdaptivePrefetch`` lets its consumer size the window
from the run time of the tasks it settles, so that the last task of the window would
start within a budget (AMQP: ``window_budget``, 60 s; pgsql: the same URI option, 0.1 s),
never below 1; it raises it again when the tasks get short.

The run time is measured where the consumer is: from a task's reservation (or the
settle before it, whichever is later: a task reserved ahead starts when the one
before it ends) to its settle; several settled at once share the time. An
exponentially weighted average smooths it. A window of ``w`` holds the running task
and ``w - 1`` waiting, so the last starts after ``(w - 1)`` run times:
``w = 1 + budget // run time``. It is a forecast from the tasks before: a task much
longer than those still delays the ones behind it.
"""

from __future__ import annotations

import time

#: the weight of the newest run time in the average
SMOOTHING = 0.3


class AdaptivePrefetch(int):
    """A prefetch nobody chose: the transport's default, which the consumer may resize.

    The worker runtime passes ``spec.prefetch or worker.prefetch or
    transport.default_prefetch`` to the consumer unchanged, so the type says whether the
    number came from the user (a plain ``int``: kept as it is) or from here."""


class Window:
    """The run-time estimate of one consumer and the window it asks for."""

    def __init__(self, largest: int, budget: float) -> None:
        self.largest = largest
        self.budget = budget
        #: average seconds a task, None until the first settle
        self.run_time: float | None = None
        self._since: float | None = None  # when the task now running started

    def started(self, now: float | None = None) -> None:
        """A task was reserved (handed to the worker): it starts now if none runs."""
        if self._since is None:
            self._since = time.monotonic() if now is None else now

    def settled(self, count: int = 1, now: float | None = None) -> None:
        """``count`` tasks ended now (the next one held, if any, starts now)."""
        now = time.monotonic() if now is None else now
        if self._since is None or count < 1:
            return
        each = max(now - self._since, 0.0) / count
        self.run_time = (
            each if self.run_time is None else SMOOTHING * each + (1 - SMOOTHING) * self.run_time
        )
        self._since = now

    def idle(self) -> None:
        """Nothing held any more: the next reserve starts the clock again."""
        self._since = None

    def target(self) -> int:
        """The window the estimate asks for (the largest before any estimate)."""
        if self.run_time is None:
            return self.largest
        if self.run_time <= 0:
            return self.largest
        return max(1, min(self.largest, 1 + int(self.budget // self.run_time)))

    def resize_to(self, current: int) -> int | None:
        """The window to switch to from ``current``, or None to keep it: down as soon as
        the estimate asks for less (the budget), up only to double or more, or to the
        largest (a resize costs a re-subscription: not for every wobble)."""
        wanted = self.target()
        if wanted < current:
            return wanted
        if wanted > current and (wanted >= 2 * current or wanted == self.largest):
            return wanted
        return None
