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
retry...: in a drain, a few tasks later, in the same script as their acks), or this
module's thread, once the oldest pending mark is ``DEFER`` old (the task is still
running: the mark goes out with the acks before it, unanswered, in the ``START`` script,
the reply read with the consumer's next call). The script writes ``started_at`` as the
server's time less the age the consumer measured, so the times stay the server's clock,
right to the network's delay.

The thread takes the consumer's lock without waiting: the consumer holds it through each
of its calls (``reserve``, ``start``, ``ack``...), so a mark goes out either with a call
or between calls, never twice. A worker that never returns from ``process()`` and holds
the GIL (a C extension) delays the thread as it delays any: the mark is then late.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from typing import Any, Protocol

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


class Flushable(Protocol):
    """What the thread needs of a consumer."""

    def flush_marks(self, now: float) -> float | None:
        """Send the pending marks if the oldest is ``DEFER`` old; None when none wait
        any more, else the seconds to wait before looking again."""
        ...


class MarkFlusher:
    """One daemon thread per consumer that defers marks: idle while nothing is pending,
    else asleep until the oldest pending mark is ``DEFER`` old (the consumer's calls
    usually send it first: then the thread looks at the next one's age, and sleeps on).

    Both waits are on a ``threading.Lock`` held while nothing happens, released to wake
    the thread (``wake``) or to stop it (``close``): a lock's timed ``acquire`` is one C
    call, where an ``Event``'s runs ``threading.Condition``'s Python code (the thread's
    looks, every ``DEFER / 2`` through an ``Event`` before, cost a tracked drain 6k
    instructions a task under callgrind, whose slowness makes them many)."""

    def __init__(self, consumer: Flushable, name: str) -> None:
        self._consumer = weakref.ref(consumer)
        self._idle = threading.Lock()  # held: nothing pending (``wake`` releases it)
        self._idle.acquire()
        self._running = threading.Lock()  # held: not stopped (``_end`` releases it)
        self._running.acquire()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        # a consumer dropped without close(): the thread, idle, ends too
        weakref.finalize(consumer, self._end)

    def wake(self) -> None:
        """A first mark is pending (the consumer calls it only when none was)."""
        _release(self._idle)

    def close(self) -> None:
        """Stop the thread (it sends nothing more)."""
        self._end()
        if self._thread is not threading.current_thread():
            self._thread.join(5)

    def _end(self) -> None:
        _release(self._running)
        _release(self._idle)

    def _run(self) -> None:
        while True:
            self._idle.acquire()  # until a mark is pending, or the end
            wait = DEFER  # the first mark came just now
            while True:
                if self._running.acquire(timeout=wait):
                    return  # released by ``_end``
                consumer = self._consumer()
                if consumer is None:
                    return
                after = consumer.flush_marks(time.monotonic())
                del consumer
                if after is None:
                    break  # none pending: idle (a mark pended since released ``_idle``)
                wait = max(0.001, after)


def _release(lock: threading.Lock) -> None:
    """Release ``lock`` unless it is released already (by another thread meanwhile)."""
    if lock.locked():
        with contextlib.suppress(RuntimeError):
            lock.release()
