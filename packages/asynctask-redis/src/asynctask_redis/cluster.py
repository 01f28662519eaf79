"""``redis+cluster://``: the redis transport on a Redis Cluster.

Every key of one queue carries the queue as a hash tag (``P_{Q}``, ``P:{Q}:delayed``,
...), so all of them live in one slot and every script, which touches one queue only,
runs whole on the node that owns that slot. The two keys that span queues are kept by
the client, outside the scripts: ``P:queues`` (the set of queue names, added to on submit
and when a consumer opens) and the lookup of a task id, which asks each known queue.

Routing uses redis-py's ``RedisCluster`` for the slot map only: a command goes on a
pooled connection of the node owning its key, as the single-server transport sends it
(see ``asynctask_redis.connection``). A ``MOVED``, ``ASK``, a cluster-down answer or a
lost connection marks the map stale; the next call reads it again (after a failover,
the promoted replica), and the transport's usual retries carry the call over.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MovedError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.retry import Retry

from asynctask.errors import InvalidURIError, TransportError, TransportUnavailable
from asynctask.status import SubmitOptions
from asynctask.transport import QueueStats
from asynctask.uri import redact
from asynctask_redis import scripts
from asynctask_redis.connection import Server, call, pipeline, run
from asynctask_redis.replication import Waited
from asynctask_redis.transport import RedisTransport

T = TypeVar("T")

_MOVED = (MovedError, AskError, ClusterDownError, ClusterError, TryAgainError)


def _is_move(exc: BaseException) -> bool:
    # A script names no keys (EVALSHA .. 0), so a node that no longer owns the slot does
    # not answer MOVED: a demoted master (a failover, an operator's CLUSTER FAILOVER)
    # answers READONLY, or refuses the keys as not local. Both mean: read the map again.
    if isinstance(
        exc, (*_MOVED, ReadOnlyError, redis.ConnectionError, redis.TimeoutError, OSError)
    ):
        return True
    text = str(exc)
    return isinstance(exc, ResponseError) and (
        text.startswith(("MOVED", "ASK", "CLUSTERDOWN")) or "non local key" in text
    )


class ClusterServer(Server):
    """The nodes of a cluster as a URI names them, and the slot map that routes keys."""

    def __init__(self, location: str, driver_options: Mapping[str, str], options: Any) -> None:
        try:
            parts = urlsplit(location)
        except ValueError as exc:
            raise InvalidURIError(f"{redact(location)!r} is not a valid URI: {exc}") from exc
        if parts.path not in ("", "/"):
            raise InvalidURIError(
                f"{redact(location)!r}: a cluster has no database number; use "
                "redis+cluster://host:port[,host:port...]"
            )
        netloc = parts.netloc.rsplit("@", 1)[-1]
        nodes: list[ClusterNode] = []
        for item in netloc.split(","):
            host, _, port = item.strip().rpartition(":")
            if not host or not port.isdigit():
                raise InvalidURIError(
                    f"{redact(location)!r}: name each node as host:port, e.g. "
                    "redis+cluster://10.0.0.1:7000,10.0.0.2:7000"
                )
            nodes.append(ClusterNode(host, int(port)))  # type: ignore[no-untyped-call]
        self.where = "cluster " + ",".join(f"{n.host}:{n.port}" for n in nodes)
        self.secret = unquote(parts.password) if parts.password else None
        self.pool_size = options["pool_size"]
        extra: dict[str, Any] = {}
        if "client_name" in driver_options:
            extra["client_name"] = driver_options["client_name"]
        if parts.username:
            extra["username"] = unquote(parts.username)
        self._nodes = nodes
        self._settings = dict(
            password=self.secret,
            socket_timeout=options["socket_timeout"],
            socket_connect_timeout=options["connect_timeout"],
            max_connections=self.pool_size,
            retry=Retry(NoBackoff(), 0),
            **extra,
        )
        self._client: RedisCluster | None = None
        self._stale = False
        self._lock = threading.Lock()

    def slot_map(self) -> RedisCluster:
        """redis-py's cluster client (its slot map read again when marked stale)."""
        with self._lock:
            if self._client is None:
                self._client = RedisCluster(startup_nodes=self._nodes, **self._settings)
                self._stale = False
            elif self._stale:
                self._client.nodes_manager.initialize()
                self._stale = False
            return self._client

    def pool_for(self, key: str) -> Any:
        """The connection pool of the master owning ``key``'s slot."""
        try:
            node = self.slot_map().nodes_manager.get_node_from_slot(key_slot(key.encode()))
        except (RedisError, OSError, IndexError) as exc:
            self._stale = True
            raise self.error(exc) from exc
        connection = node.redis_connection
        if connection is None:
            self._stale = True
            raise TransportUnavailable(f"Redis {self.where}: no connection to {node.name} yet")
        return connection.connection_pool

    def moved(self, exc: BaseException) -> bool:
        """Marks the slot map stale when ``exc`` says the key may be elsewhere now."""
        if _is_move(exc):
            self._stale = True
            return True
        return False

    def error(self, exc: BaseException) -> TransportError:
        """As a single server's, and a cluster's moves and outages worth retrying."""
        if _is_move(exc) and not isinstance(exc, redis.ConnectionError | OSError):
            return TransportUnavailable(
                f"Redis {self.where} is moving the slot or failing over "
                f"({self.scrub(f'{type(exc).__name__}: {exc}')})"
            )
        return super().error(exc)

    def close(self) -> None:
        """Close every node's connections."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


class RedisClusterTransport(RedisTransport):
    """Tasks in a Redis Cluster; see the module docstring."""

    schemes = ("redis+cluster",)  # type: ignore[assignment]

    server: ClusterServer
    #: ``execute`` routes ``run``, whose arguments name the queue, not a packed command
    packs_submits = False

    def _make_server(self) -> ClusterServer:
        return ClusterServer(self.location, self.driver_options, self.options)

    @property
    def cluster(self) -> ClusterServer:
        """The cluster's nodes and slot map."""
        return self.server

    # -- keys: the queue as a hash tag ----------------------------------------------------

    def ready_key(self, queue: str) -> str:
        """``<prefix>_{<queue>}``: the ready list, in the queue's slot."""
        return f"{self.prefix}_{{{queue}}}"

    def key(self, queue: str, kind: str) -> str:
        """``<prefix>:{<queue>}:<kind>``: every other key of the queue, in its slot."""
        return f"{self.prefix}:{{{queue}}}:{kind}"

    def script_queue(self, queue: str) -> str:
        """``{queue}``: the scripts build the tagged keys from it."""
        return f"{{{queue}}}"

    # -- routing ----------------------------------------------------------------------------

    def execute(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` on the node owning the keys it touches.

        ``run`` goes by its queue, ``call`` by its first key (a ``Waited`` one as its
        own), ``pipeline`` is split by slot and its replies put back in order. A call
        that met a failover or a moved slot is made once more at once on the new map.
        """
        if fn is pipeline:
            commands: Sequence[Sequence[Any]] = args[0]
            groups: dict[int, list[int]] = {}
            for i, command in enumerate(commands):
                key = str(command[1]) if len(command) > 1 else self.prefix
                groups.setdefault(key_slot(key.encode()), []).append(i)
            replies: list[Any] = [None] * len(commands)
            part: Any
            for indexes in groups.values():
                first = commands[indexes[0]]
                key = str(first[1]) if len(first) > 1 else self.prefix
                part = self._on(key, pipeline, [commands[i] for i in indexes])
                for i, reply in zip(indexes, part, strict=True):
                    replies[i] = reply
            return replies  # type: ignore[return-value]
        return self._on(self._routed_by(fn, args), fn, *args)

    def _routed_by(self, fn: Callable[..., Any], args: Sequence[Any]) -> str:
        """The key whose node runs ``fn(conn, *args)``: a ``Waited`` call goes where its
        write goes, so that its ``WAIT`` counts the replicas of that write."""
        inner = fn.fn if isinstance(fn, Waited) else fn
        if inner is run:
            return self.key(str(args[2]).strip("{}"), "")
        if inner is call and len(args) > 1:
            return str(args[1])
        return self.prefix

    def _on(self, key: str, fn: Callable[..., T], *args: Any) -> T:
        for last in (False, True):
            pool = self.cluster.pool_for(key)
            try:
                conn = pool.get_connection()
            except (RedisError, OSError) as exc:
                self.cluster.moved(exc)
                if last:
                    raise self.cluster.error(exc) from exc
                continue
            try:
                return fn(conn, *args)
            except (RedisError, OSError) as exc:
                conn.disconnect()
                if not self.cluster.moved(exc) or last:
                    raise self.cluster.error(exc) from exc
            finally:
                pool.release(conn)
        raise AssertionError("unreachable")

    # -- what spans queues: kept by the client ------------------------------------------------

    def _put(
        self,
        queue: str,
        tasks: Sequence[tuple[str, str]],
        delay: float,
        options: SubmitOptions,
    ) -> Sequence[str] | None:
        self.execute(call, "SADD", self.key_queues, queue)  # first: never a hidden task
        return super()._put(queue, tasks, delay, options)

    def _consumer(self, queue: str, prefetch: int) -> Any:
        self.execute(call, "SADD", self.key_queues, queue)
        return super()._consumer(queue, prefetch)

    def _owned_consumer(self, queue: str, prefetch: int, owner: str) -> Any:
        self.execute(call, "SADD", self.key_queues, queue)
        return super()._owned_consumer(queue, prefetch, owner)

    def _store_undecodable(self, queue: str, raw: bytes, exc: ValueError) -> None:
        self.execute(call, "SADD", self.key_queues, queue)
        super()._store_undecodable(queue, raw, exc)

    def known_queues(self) -> list[str]:
        """Every queue name ever stored in ``P:queues`` (never pruned: a prune racing a
        submit on another node could hide a queue)."""
        return sorted(name.decode() for name in self.execute(call, "SMEMBERS", self.key_queues))

    def _queue_names(self) -> list[str]:
        return [s.name for s in self._all_stats()]

    def _all_stats(self) -> list[QueueStats]:
        found = []
        for queue in self.known_queues():
            stats = self._stats(queue)
            counts = (stats.ready, stats.delayed, stats.retrying, stats.in_flight, stats.failed)
            if any(counts):
                found.append(stats)
        return found

    def task_queues(self, ids: Sequence[str]) -> list[str | None]:
        """Each id's queue: the known queue holding its status hash (outside scripts)."""
        if not ids:
            return []
        names = self.known_queues()
        commands = [("EXISTS", self.key(q, f"task:{i}")) for i in ids for q in names]
        replies = self.execute(pipeline, commands) if commands else []
        out: list[str | None] = []
        for n, _ in enumerate(ids):
            row = replies[n * len(names) : (n + 1) * len(names)]
            out.append(next((q for q, there in zip(names, row, strict=True) if there), None))
        return out

    # -- heartbeats and close -------------------------------------------------------------------

    def _beat(self) -> None:
        """Refresh the heartbeat of every live consumer, each on its queue's node."""
        while not self._beat_stop.wait(self.heartbeat_seconds):
            commands = self._beat_commands()
            if not commands:
                continue
            try:
                self.execute(pipeline, commands)
                self.note_recovery()
            except TransportError as exc:
                if not self._beat_stop.is_set():
                    self.note_outage(exc)

    def _close(self) -> None:
        self._beat_stop.set()
        if self._beat_thread is not None and self._beat_thread is not threading.current_thread():
            self._beat_thread.join(5)
        self.cluster.close()


__all__ = ["RedisClusterTransport", "scripts"]
