"""Which queues keep no task status, as one transport object last learnt it.

A queue whose workers run with ``track_status = False`` (recorded by the run loop in the
state store, ``StateStore.set_tracking``) never reads its tasks' statuses: ``status``
raises ``StatusNotTracked`` for them. A status record written at their submit is then
only a cost (a row, a key, a file per task), so ``Transport.submit_tasks`` skips it for
such a queue. It learns which queues they are from ``StateStore.untracked``, once per
queue every ``RECHECK_SECONDS``, never with a round trip per submit.

What that means for a user (README, "The life of a task"):

* within ``RECHECK_SECONDS`` after a queue's workers flip ``track_status``, a submitter
  that read the old answer may still write records (tracked -> untracked: they read
  ``StatusNotTracked`` like the others) or skip them (untracked -> tracked);
* a task submitted without a record gets an id that says so
  (``transport.unrecorded_task_id``): ``status()`` raises ``StatusNotTracked`` for it,
  as DESIGN.md section 6 wants for an untracked queue's task, until a worker that tracks
  starts it; from there it is followed where the store can (``submitted_at`` unknown).

A run loop in this process that announces its tracking updates the answer at once
(``note``), so a worker and a submitter sharing a transport object never disagree.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection

#: seconds an answer is trusted. A flip of ``track_status`` comes with a deploy or a
#: worker restart, itself seconds long; 5 s keeps the window of that order while a
#: process submitting to 1,000 queues reads the store 200 times a second at most (one
#: read per queue per 5 s: about 0.02% of the round trips of 1,000 submits/s to one queue).
RECHECK_SECONDS = 5.0
#: queues remembered at most (the one read longest ago is dropped): a process submitting
#: to millions of queue names keeps a bounded map
MAX_QUEUES = 10_000


class UntrackedQueues:
    """A per-transport cache of ``StateStore.untracked``; safe between threads.

    An answer still fresh costs a dict lookup and a clock read, no lock (a dict's ``get``
    is atomic): about 0.5 us of a submit's 10-60 us on localmem.
    """

    def __init__(
        self,
        recheck: float = RECHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        size: int = MAX_QUEUES,
    ) -> None:
        self.recheck = recheck
        self._clock = clock
        self._size = size
        self._lock = threading.Lock()
        #: queue -> (untracked, read at), in the order they were read (oldest first)
        self._known: dict[str, tuple[bool, float]] = {}

    def known(self, queue: str) -> bool | None:
        """The fresh answer for ``queue`` (whether it is untracked), else ``None``."""
        entry = self._known.get(queue)
        if entry is None or self._clock() - entry[1] >= self.recheck:
            return None
        return entry[0]

    def untracked(self, queue: str, read: Callable[[Collection[str]], Collection[str]]) -> bool:
        """Whether ``queue``'s workers keep no status; ``read`` (``StateStore.untracked``)
        is called only when the answer is missing or older than ``recheck`` seconds. An
        error of ``read`` propagates and nothing is remembered."""
        found = self.known(queue)
        if found is not None:
            return found
        now = self._clock()
        answer = queue in read({queue})  # outside the lock: a round trip
        self.note(queue, not answer, at=now)
        return answer

    def note(self, queue: str, tracked: bool, at: float | None = None) -> None:
        """Remember ``queue``'s tracking (a run loop of this process just recorded it)."""
        with self._lock:
            self._known.pop(queue, None)  # to the end: read last
            self._known[queue] = (not tracked, self._clock() if at is None else at)
            while len(self._known) > self._size:
                del self._known[next(iter(self._known))]
