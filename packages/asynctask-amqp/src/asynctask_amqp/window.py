"""The adaptive window on AMQP: how many unacknowledged tasks a consumer lets the broker
send it (``asynctask.window`` holds the estimate, shared with pgsql).

Why AMQP needs it. Large, a drain of short tasks is not bound by round trips (a relay's
drain at 4: 0.49x the raw client; at 32: 1.30x). But RabbitMQ's ``consumer_timeout``
(30 min by default) counts from delivery, not from the start of the task: a message
delivered behind 32 one-minute tasks times out before it starts, and the broker closes
the channel and gives back every task it held, the running one too. So the consumer
starts at ``AmqpTransport.default_prefetch`` (an ``AdaptivePrefetch``, 32) and sizes
its window so that the last task of it would start within ``window_budget`` seconds (a
URI option, 60 by default): keep it well under ``consumer_timeout``.
"""

from __future__ import annotations

# One estimate for every transport that sizes its window (pgsql sizes each RESERVE with it)
from asynctask.window import SMOOTHING, AdaptivePrefetch, Window

__all__ = ["SMOOTHING", "AdaptivePrefetch", "Window"]
