"""``wait_replicas``: a write counts as done only once replicas hold it (``WAIT``).

Why. Redis replicates asynchronously: the master answers a write before any replica has
it, so a master that dies in that gap takes the write with it, and the replica promoted
in its place (by Sentinel or the cluster) never saw it. For a submit that is a lost task
the producer believes stored. With ``?wait_replicas=N&wait_timeout_ms=T`` every submit,
ack, retry and fail is followed, on the same connection, by ``WAIT N T``: Redis answers
once N replicas have acknowledged everything that connection wrote (the connection's
replication offset), or after T ms with how many did.

What a shortfall means, and what we do about it:

* a **submit** raises ``ReplicationTimeout``: the task *is* on the master and will run
  unless the master fails before a replica copies it; submitting again may run it twice.
  The error carries the ids so the caller can decide (``transport.status(id)`` tells
  later whether it survived).
* an **ack, retry or fail** logs a warning and goes on: if a failover undoes it, the
  task is back in the consumer's processing list on the new master and runs again
  (at least once), so a shortfall costs a possible duplicate, never a task. Raising
  would make the worker treat a finished task as a broken transport.

``WAIT`` is not consensus: it bounds what a failover loses to writes the promoted
replica missed, and Sentinel and the cluster promote the replica with the highest
replication offset; with one replica per master and ``wait_replicas=1`` that replica
holds every confirmed write. See README.md ("Running on many machines").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from asynctask.errors import TransportError
from asynctask_redis.connection import call


class ReplicationTimeout(TransportError):
    """A submit reached the master, but fewer replicas than ``wait_replicas`` confirmed it
    within ``wait_timeout_ms``; ``ids`` are the tasks written (they may run)."""

    def __init__(self, message: str, ids: Sequence[str]) -> None:
        super().__init__(message)
        self.ids = list(ids)


@dataclass(frozen=True)
class Replication:
    """How many replicas must confirm a write, and for how long to wait for them."""

    replicas: int
    timeout_ms: int

    def confirmed(self, acked: int) -> bool:
        """Whether ``acked`` replicas (``WAIT``'s reply) are enough."""
        return acked >= self.replicas


class Waited:
    """``fn(conn, *args)`` then ``WAIT`` on that same connection: ``(result, replicas)``.

    ``WAIT`` counts replicas that hold what *this connection* wrote, so it must follow the
    write on the connection that made it (on a cluster: the node owning the queue's slot,
    which the transport's routing picks from ``fn``, see ``RedisClusterTransport``).
    """

    def __init__(self, fn: Callable[..., Any], replication: Replication) -> None:
        self.fn = fn
        self.replication = replication

    def __call__(self, conn: Any, *args: Any) -> tuple[Any, int]:
        result = self.fn(conn, *args)
        r = self.replication
        acked = call(conn, "WAIT", r.replicas, r.timeout_ms)
        return result, int(acked)
