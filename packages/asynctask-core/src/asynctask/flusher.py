"""``MarkFlusher``: a consumer's thread that sends writes it holds once they are due.

A consumer that holds a write (a running mark, a success) for the next message it sends
anyway needs someone to send it when no message comes soon: the task runs on, and its
status must not read ``queued`` for long. One daemon thread per consumer does it, asleep
on locks until the oldest held write is due. Used by the redis consumer's late running
marks (``asynctask_redis.startmarks``), the redis status feed and the AMQP relay's
status writes (``asynctask_amqp.relayedfeed``).
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from typing import Protocol

#: seconds the thread first sleeps after a wake (the longest a consumer holds a write)
FIRST_LOOK = 0.02


class Flushable(Protocol):
    """What the thread needs of a consumer."""

    def flush_marks(self, now: float) -> float | None:
        """Send the held writes if the oldest is due; None when none wait any more,
        else the seconds to wait before looking again."""
        ...


class MarkFlusher:
    """One daemon thread per consumer that sends held writes: idle while nothing is
    held, else asleep until the oldest is due (the consumer's calls usually send it
    first: then the thread looks at the next one's age, and sleeps on).

    Both waits are on a ``threading.Lock`` held while nothing happens, released to wake
    the thread (``wake``) or to stop it (``close``): a lock's timed ``acquire`` is one C
    call, where an ``Event``'s runs ``threading.Condition``'s Python code (the thread's
    looks, every 10 ms through an ``Event`` before, cost a tracked drain 6k instructions
    a task under callgrind, whose slowness makes them many)."""

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
        """A first write is held (the consumer calls it only when none was)."""
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
            self._idle.acquire()  # until a write is held, or the end
            wait = FIRST_LOOK  # the first write came just now
            while True:
                if self._running.acquire(timeout=wait):
                    return  # released by ``_end``
                consumer = self._consumer()
                if consumer is None:
                    return
                after = consumer.flush_marks(time.monotonic())
                del consumer
                if after is None:
                    break  # none held: idle (a write held since released ``_idle``)
                wait = max(0.001, after)


def _release(lock: threading.Lock) -> None:
    """Release ``lock`` unless it is released already (by another thread meanwhile)."""
    if lock.locked():
        with contextlib.suppress(RuntimeError):
            lock.release()
