"""Running marks sent late: a redis consumer's starts, written within ``DEFER`` seconds.

A task the worker starts is ``running`` in its status (DESIGN.md section 6). Sending that
mark at every start, even without waiting for the reply, cost a drain one message a task
where it made one a ``prefetch`` of tasks without statuses: the client's send and the
server's wake-up, script and reply, on 2 cores shared with the worker (0.26-0.4x the
untracked drain, same-run rounds; 0.36-0.57x with the mark's script doing nothing at all).

So a consumer keeps a start it knows needs no verdict (``RedisConsumer.start``: the
cancel feed is live and says nothing of the task, which has no ``expires``) in its list of
pending acknowledgements, as ``('', id, '<attempt>:<ms since it started>')`` (the text
made as it is sent, from the attempt and ``time.monotonic()`` kept beside), and
whichever comes first carries it: the consumer's next call to Redis (the next move, a
retry...: in a drain, a few tasks later, in the same script as their acks), or the
consumer's thread (``asynctask.flusher.MarkFlusher``), once the oldest pending mark is
``DEFER`` old (the task is still running: the mark goes out with the acks before it,
unanswered, in the ``START`` script, the reply read with the consumer's next call). The
script writes ``started_at`` as the server's time less the age the consumer measured, so
the times stay the server's clock, right to the network's delay.

The thread takes the consumer's lock without waiting: the consumer holds it through each
of its calls (``reserve``, ``start``, ``ack``...), so a mark goes out either with a call
or between calls, never twice. A worker that never returns from ``process()`` and holds
the GIL (a C extension) delays the thread as it delays any: the mark is then late.
"""

from __future__ import annotations

import logging
from typing import Any

from asynctask.flusher import Flushable, MarkFlusher

#: the longest a started task reads ``queued`` before its mark is sent (seconds)
DEFER = 0.02

logger = logging.getLogger("asynctask.redis")

__all__ = ["DEFER", "Flushable", "MarkFlusher", "warn_late_verdict"]


def warn_late_verdict(sender: object, task_id: str, verdict: Any) -> None:
    """The reply to a start sent unanswered (by a consumer's marks or a status feed):
    anything but ``run`` means a cancel came meanwhile, and the task runs as a cancelled
    running task (its supervisor stops it; its result is discarded)."""
    text = verdict.decode() if isinstance(verdict, bytes) else str(verdict)
    if text != "run":
        logger.warning(
            "%r: task %s was %s as it started; it runs as a %s running task (its result "
            "is discarded)",
            sender,
            task_id,
            text,
            text,
        )
