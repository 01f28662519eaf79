"""Running marks sent late: a redis consumer's starts, written within ``DEFER`` seconds.

A task the worker starts is ``running`` in its status (DESIGN.md section 6). Sending that
mark at every start, even without waiting for the reply, cost a drain one message a task
where it made one a ``prefetch`` of tasks without statuses: the client's send and the
server's wake-up, script and reply, on 2 cores shared with the worker (0.26-0.4x the
untracked drain, same-run rounds; 0.36-0.57x with the mark's script doing nothing at all).

So a consumer keeps a start it knows needs no verdict (``RedisConsumer.start``: the
cancel feed is live and says nothing of the task, which has no ``expires``) in its list of
pending acknowledgements, as ``('', id, StartMark)``, and whichever comes first carries it:
the consumer's next call to Redis (the next move, a retry...: in a drain, a few tasks
later, in the same script as their acks), or this module's thread, once the oldest pending
mark is ``DEFER`` old (the task is still running: the mark goes out with the acks before
it, unanswered, in the ``START`` script, the reply read with the consumer's next call).
The script writes ``started_at`` as the server's time less the age the consumer measured,
so the times stay the server's clock, right to the network's delay.

The thread takes the consumer's lock without waiting: the consumer holds it through each
of its calls (``reserve``, ``start``, ``ack``...), so a mark goes out either with a call
or between calls, never twice. A worker that never returns from ``process()`` and holds
the GIL (a C extension) delays the thread as it delays any: the mark is then late.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any, NamedTuple, Protocol

#: the longest a started task reads ``queued`` before its mark is sent (seconds)
DEFER = 0.02

logger = logging.getLogger("asynctask.redis")


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


class StartMark(NamedTuple):
    """A start not sent yet: the attempt and when it started (``time.monotonic()``). A
    named tuple, made once a task: a third of a frozen dataclass's cost."""

    attempt: int
    at: float

    def text(self, now: float) -> str:
        """``<attempt>:<ms since the start>``, as the scripts' ``ack_all`` reads it."""
        return f"{self.attempt}:{max(0, int((now - self.at) * 1000))}"


class Flushable(Protocol):
    """What the thread needs of a consumer."""

    def flush_marks(self, now: float) -> bool:
        """Send the pending marks if the oldest is ``DEFER`` old; whether some still wait."""
        ...


class MarkFlusher:
    """One daemon thread per consumer that defers marks: idle (blocked on an event) while
    nothing is pending, else looking every ``DEFER / 2`` seconds."""

    def __init__(self, consumer: Flushable, name: str) -> None:
        self._consumer = weakref.ref(consumer)
        self._wanted = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        # a consumer dropped without close(): the thread, idle on the event, ends too
        weakref.finalize(consumer, self._end)

    def wake(self) -> None:
        """A mark is pending (cheap when the thread is already looking)."""
        if not self._wanted.is_set():
            self._wanted.set()

    def close(self) -> None:
        """Stop the thread (it sends nothing more)."""
        self._end()
        if self._thread is not threading.current_thread():
            self._thread.join(5)

    def _end(self) -> None:
        self._stop.set()
        self._wanted.set()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            if self._stop.wait(DEFER / 2):
                return
            consumer = self._consumer()
            if consumer is None:
                return
            # cleared before the look: a mark pended during it sets it again
            self._wanted.clear()
            if consumer.flush_marks(time.monotonic()):
                self._wanted.set()
            del consumer
