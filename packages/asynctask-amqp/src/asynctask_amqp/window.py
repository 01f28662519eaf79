"""The adaptive window: how many unacknowledged tasks a consumer lets the broker send it.

Why. A consumer's prefetch is a trade. Large, a drain of short tasks is not bound by
round trips (a relay's drain at 4: 0.49x the raw client; at 32: 1.30x). But RabbitMQ's
``consumer_timeout`` (30 min by default) counts from delivery, not from the start of
the task: a message delivered behind 32 one-minute tasks times out before it starts,
and the broker closes the channel and gives back every task it held, the running one
too. So when neither the worker class nor the queue entry sets ``prefetch``, the
consumer starts at ``AmqpTransport.default_prefetch`` (an ``AdaptivePrefetch``, 32)
and sizes its window from the run time of the tasks it settles, so that the last task
of the window would start within ``window_budget`` seconds (a URI option, 60 by
default), never below 1; it raises it again when the tasks get short.

The run time is measured where the consumer is: from a task's reservation (or the
settle before it, whichever is later: a task reserved ahead starts when the one
before it ends) to its settle; several settled at once share the time. An
exponentially weighted average smooths it. A window of ``w`` holds the running task
and ``w - 1`` waiting, so the last starts after ``(w - 1)`` run times:
``w = 1 + budget // run time``. It is a forecast from the tasks before: a task much
longer than those still delays the ones behind it, which is why the budget should be
well under ``consumer_timeout``.
"""

from __future__ import annotations

# One estimate for every transport that sizes its window (pgsql sizes each RESERVE with it)
from asynctask.window import SMOOTHING, AdaptivePrefetch, Window

__all__ = ["SMOOTHING", "AdaptivePrefetch", "Window"]
