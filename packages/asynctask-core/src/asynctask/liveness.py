"""Liveness kept by another process than the one that runs the tasks.

A consumer's reserved tasks stay invisible to others only while its worker is known to
live. A heartbeat thread inside the worker process cannot tell that: a task holding the
GIL for a minute (a long regex, a C extension) stops every thread of its process, and
the heartbeat lapses while the worker is alive and busy. So under ``asynctask workers``
the supervisor keeps it: it knows its children live (it holds a pidfd of each), runs no
task code, and refreshes each child's liveness from a thread of its own:

* each child start gets an *owner* id (``new_owner()``: host name and a random part,
  never a bare PID, so two hosts never clash), passed to the child in its spec;
* the child takes tasks through ``transport.consumer(queue, prefetch, owner=owner)``:
  such a consumer runs no heartbeat of its own, its tasks live as long as the owner's;
* the supervisor holds ``transport.liveness(queue, owner)`` and calls ``beat()`` every
  ``interval`` seconds while the child lives; when the child exits it calls
  ``end(started, finished)``: the owner's tasks go back to the queue at once, counting an
  attempt only for those the child had started (the others were prefetched, never run),
  and those it had finished are removed (an acknowledgement a transport sends with the
  consumer's next call never left the dead child).

A supervisor that dies (or a host that is cut off) stops beating: its owners' tasks come
back within the transport's ``recovery_seconds``, every one counted, as for any death.

A transport whose consumers cannot lose liveness to a busy thread (AMQP: the broker
watches a connection; ``localmem``: one process) keeps the default: ``NoLiveness``, whose
calls do nothing, and ``consumer(owner=...)`` ignores the owner. If such a transport keeps
its global limits in the store of ``asynctask_state`` (AMQP), an owner that may hold
running slots is kept alive in that store instead (``LimitOwnerLiveness``), so that a
dead child's slots come back.
"""

from __future__ import annotations

import os
import re
import socket
from abc import ABC, abstractmethod
from collections.abc import Collection

_OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_HOST_CHARS = re.compile(r"[^A-Za-z0-9-]+")


def new_owner() -> str:
    """A new owner id: ``<host>.<24 random hex digits>``, unique across hosts."""
    host = _HOST_CHARS.sub("-", socket.gethostname()).strip("-")[:40] or "host"
    return f"{host}.{os.urandom(12).hex()}"


def check_owner(owner: str) -> str:
    """``owner`` if it is a valid owner id, else ``ValueError`` saying what is allowed."""
    if not isinstance(owner, str) or not _OWNER.match(owner):
        raise ValueError(
            f"owner id {owner!r} is not valid: use 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (asynctask.liveness.new_owner() makes one)"
        )
    return owner


class Liveness(ABC):
    """The liveness of one owner's consumers of one queue, kept from outside them.

    Used from one thread (the supervisor's keeper thread). ``beat`` and ``end`` raise
    ``TransportUnavailable`` while the backend is away; the caller tries again.
    """

    def __init__(self, queue: str, owner: str, interval: float) -> None:
        self.queue = queue
        self.owner = check_owner(owner)
        #: seconds between beats that keep the owner alive with a margin
        self.interval = interval

    @abstractmethod
    def beat(self) -> None:
        """The owner lives: refresh its liveness."""

    @abstractmethod
    def end(self, started: Collection[str] | None, finished: Collection[str] = ()) -> int:
        """The owner is gone: hand its reserved tasks back now; return how many went back.

        A task whose id is in ``started`` counts an attempt (it was running when its
        worker died); one in ``finished`` was settled by the worker (``ack`` may still be
        pending in the consumer) and is removed; the others go back untouched, at the
        head of the queue. ``started=None`` means "not known": every one counts. Calling
        it again hands back nothing.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.queue!r}, {self.owner!r})"


class NoLiveness(Liveness):
    """For transports whose consumers keep their own liveness: every call does nothing."""

    def beat(self) -> None:
        """Nothing to refresh."""

    def end(self, started: Collection[str] | None, finished: Collection[str] = ()) -> int:
        """Nothing to hand back: the transport recovers the consumer's tasks itself."""
        return 0


class LimitOwnerLiveness(Liveness):
    """The liveness of an owner whose tasks its transport recovers by itself (AMQP: the
    broker watches the connection), kept in the store that holds the transport's global
    limits (``asynctask_state``): a running slot names its owner there, and frees itself
    once that owner is no longer alive (``asynctask.limits``), so a child that dies
    holding one does not leak it. The store holds none of the owner's tasks: ``end``
    only ends the owner there, and hands nothing back."""

    def __init__(self, kept: Liveness) -> None:
        super().__init__(kept.queue, kept.owner, kept.interval)
        self.kept = kept

    def beat(self) -> None:
        """The owner lives: refresh it in the limits' store."""
        self.kept.beat()

    def end(self, started: Collection[str] | None, finished: Collection[str] = ()) -> int:
        """The owner is gone: its slots are free at once; its tasks are the broker's."""
        self.kept.end((), ())
        return 0
