"""The raw baselines: the plain client doing the least equivalent work, equally durable.

One class per backend, one method per measure; the harness times the calls.

=========  =====================  ===========================  ================================
backend    one by one             bulk                         drain / wake-up
=========  =====================  ===========================  ================================
redis      RPUSH                  pipelined RPUSH              BRPOP loop
pgsql      committed INSERT       multi-row INSERT             DELETE ... SKIP LOCKED RETURNING;
           (a copy of the queue   (the same table)             LISTEN for the wake-up (the
           table: its indexes                                  trigger's NOTIFY)
           and NOTIFY trigger)
amqp       publish, persistent,   publish, persistent, the     consume with ack, the prefetch
           publisher confirm      confirms pipelined           of our worker (4 by default)
files      write+fsync+rename,    write+fsync each, rename     rename loop (rename, read,
           fsync of the folder    each, one folder fsync       unlink); inotify for the wake-up
localmem   deque under a lock     deque.extend                 Condition.wait + popleft
=========  =====================  ===========================  ================================

A wake-up listener (``listen``) runs in its own process (``bench.wake``), except the
in-process localmem one, and notes each task in the ledger as our workers do.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlencode, urlsplit

from asynctask.uri import split_query
from asynctask_amqp.transport import AmqpTransport
from bench.ledger import format_line
from bench.workers import BenchNoopWorker

if TYPE_CHECKING:
    import redis

Payload = dict[str, Any]


def pg_conninfo() -> str:
    """libpq connection text for the PostgreSQL server of the pgsql transport."""
    from bench.plan import PGSQL

    parts = urlsplit(PGSQL.replace("pgsql://", "postgresql://", 1))
    host, port = parts.hostname or "127.0.0.1", parts.port or 5432
    dbname = parts.path.lstrip("/") or "test"
    user = f" user={parts.username}" if parts.username else ""
    return f"host={host} port={port} dbname={dbname}{user}"


def redis_client() -> redis.Redis:
    """A client of the Redis database of the redis transport."""
    import redis

    from bench.plan import REDIS

    return redis.Redis.from_url(REDIS, socket_connect_timeout=3)


def kombu_module() -> Any:
    """kombu, untyped (its partial hints trip mypy --strict)."""
    return importlib.import_module("kombu")


def amqp_connection(confirm_publish: bool = False) -> Any:
    """A kombu connection to the RabbitMQ server of the amqp transport."""
    from bench.plan import AMQP

    options = {"confirm_publish": True} if confirm_publish else {}
    return kombu_module().Connection(kombu_uri(AMQP), connect_timeout=3, transport_options=options)


def kombu_uri(uri: str) -> str:
    """``uri`` for kombu, which takes each query option as a ``Connection`` keyword and
    refuses the ones that are asynctask's (``relay``, ``asynctask_state``,
    ``queue_type``...): only those kombu reads the same way stay (``KOMBU_QUERY``,
    ``ssl_*``), so that ``BENCH_AMQP_URI=...?relay=false`` leaves the raw client as it
    is."""
    base, pairs = split_query(uri)
    kept = [(k, v) for k, v in pairs if k in KOMBU_QUERY or k.startswith("ssl_")]
    return f"{base}?{urlencode(kept)}" if kept else base


#: query options of an AMQP URI that kombu's ``Connection`` reads as our transport does
KOMBU_QUERY = frozenset({"heartbeat", "connect_timeout", "login_method"})


def delete_amqp_queues(names: Sequence[str]) -> None:
    """Delete these RabbitMQ queues where they exist and are empty (best effort)."""
    with contextlib.suppress(Exception), amqp_connection() as conn:
        for name in names:
            channel = conn.channel()
            try:
                channel.queue_delete(name, if_empty=True)
            except Exception:
                pass  # absent (the channel is closed by the broker) or not empty
            finally:
                with contextlib.suppress(Exception):
                    channel.close()


def _chunks(items: Sequence[Payload], size: int) -> list[Sequence[Payload]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class RawClient(ABC):
    """One backend's plain client on one queue (a key, a table, a queue, a folder)."""

    name: ClassVar[str]
    #: what the raw side does, per measure (submit_one, submit_batch, drain, latency)
    labels: ClassVar[dict[str, str]]
    #: the wake-up listener runs in a thread of the harness, not its own process
    in_process: ClassVar[bool] = False

    def __init__(self, target: str) -> None:
        self.target = target

    def create(self) -> None:  # noqa: B027 (most backends make the queue on first use)
        """Make the queue (table, folders) before a measure."""

    @abstractmethod
    def submit_one(self, payloads: Sequence[Payload]) -> None:
        """Store each payload with its own durable write."""

    @abstractmethod
    def submit_bulk(self, payloads: Sequence[Payload], batch: int) -> None:
        """Store payloads ``batch`` at a time, each batch one durable write."""

    def fill(self, payloads: Sequence[Payload], batch: int) -> None:
        """Store payloads as fast as possible before a drain (not timed)."""
        self.submit_bulk(payloads, batch)

    def send(self, payload: Payload) -> None:
        """Store one payload so that a waiting listener wakes (latency measure)."""
        self.submit_one([payload])

    @abstractmethod
    def drain(self, count: int) -> None:
        """Take ``count`` tasks one by one, as a worker does, each decoded and settled."""

    @abstractmethod
    def listen(self, ledger: str, count: int, ready: Callable[[], None]) -> None:
        """Block on the backend for ``count`` tasks, noting each in ``ledger``."""

    @abstractmethod
    def destroy(self) -> None:
        """Remove the queue and close connections."""


def _note(fd: int, payload: Payload) -> None:
    os.write(fd, format_line(payload, time.time()))


def _open_ledger(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


# -- localmem --------------------------------------------------------------------------


class _Store:
    """A deque under a condition: what an in-process queue needs at the least."""

    _stores: ClassVar[dict[str, _Store]] = {}

    def __init__(self) -> None:
        self.items: deque[str] = deque()
        self.cond = threading.Condition()

    @classmethod
    def named(cls, name: str) -> _Store:
        return cls._stores.setdefault(name, cls())


class LocalRaw(RawClient):
    """The floor for ``localmem``: a deque guarded by a ``threading.Condition``."""

    name = "localmem"
    labels: ClassVar[dict[str, str]] = {
        "submit_one": "deque append",
        "submit_batch": "deque extend",
        "drain": "popleft loop",
        "latency": "Condition wake-up",
    }
    in_process = True

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.store = _Store.named(target)

    def submit_one(self, payloads: Sequence[Payload]) -> None:
        store = self.store
        for payload in payloads:
            text = json.dumps(payload)
            with store.cond:
                store.items.append(text)
                store.cond.notify()

    def submit_bulk(self, payloads: Sequence[Payload], batch: int) -> None:
        store = self.store
        for chunk in _chunks(payloads, batch):
            texts = [json.dumps(p) for p in chunk]
            with store.cond:
                store.items.extend(texts)
                store.cond.notify_all()

    def _take(self, timeout: float) -> Payload:
        store = self.store
        with store.cond:
            if not store.cond.wait_for(lambda: store.items, timeout):
                raise TimeoutError("nothing to take")
            text = store.items.popleft()
        payload: Payload = json.loads(text)
        return payload

    def drain(self, count: int) -> None:
        for _ in range(count):
            self._take(5.0)

    def listen(self, ledger: str, count: int, ready: Callable[[], None]) -> None:
        fd = _open_ledger(ledger)
        ready()
        try:
            for _ in range(count):
                _note(fd, self._take(60.0))
        finally:
            os.close(fd)

    def destroy(self) -> None:
        _Store._stores.pop(self.target, None)


# -- redis -----------------------------------------------------------------------------


class RedisRaw(RawClient):
    """redis-py on one list: RPUSH in, BRPOP out."""

    name = "redis"
    labels: ClassVar[dict[str, str]] = {
        "submit_one": "RPUSH",
        "submit_batch": "pipelined RPUSH",
        "drain": "BRPOP loop",
        "latency": "BRPOP wake-up",
    }

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.client = redis_client()

    def submit_one(self, payloads: Sequence[Payload]) -> None:
        rpush, key = self.client.rpush, self.target
        for payload in payloads:
            rpush(key, json.dumps(payload))

    def submit_bulk(self, payloads: Sequence[Payload], batch: int) -> None:
        for chunk in _chunks(payloads, batch):
            pipe = self.client.pipeline(transaction=False)
            for payload in chunk:
                pipe.rpush(self.target, json.dumps(payload))
            pipe.execute()

    def drain(self, count: int) -> None:
        brpop, key = self.client.brpop, self.target
        for _ in range(count):
            item = brpop([key], timeout=5)
            if item is None:
                raise TimeoutError("BRPOP timed out")
            json.loads(item[1])

    def drain_batches(self, count: int, batch: int) -> None:
        """Take ``count`` tasks ``batch`` at a time (``LPOP key batch``), each decoded: the
        most a client can take with one round trip per batch, no acknowledgement at all."""
        lpop, key, loads = self.client.lpop, self.target, json.loads
        done = 0
        while done < count:
            items: list[bytes] | None = lpop(key, min(batch, count - done))  # type: ignore[assignment]
            if not items:
                raise TimeoutError(f"LPOP found the list empty after {done} of {count}")
            for item in items:
                loads(item)
            done += len(items)

    def listen(self, ledger: str, count: int, ready: Callable[[], None]) -> None:
        fd = _open_ledger(ledger)
        self.client.ping()
        ready()
        try:
            for _ in range(count):
                item = self.client.brpop([self.target], timeout=60)
                if item is None:
                    raise TimeoutError("BRPOP timed out")
                _note(fd, json.loads(item[1]))
        finally:
            os.close(fd)

    def destroy(self) -> None:
        self.client.delete(self.target)
        self.client.close()


# -- pgsql -----------------------------------------------------------------------------


#: the transport's queue table, whose columns, indexes and trigger the raw table copies
PG_QUEUE_TABLE = "asynctask.asynctask_queue"

#: the raw table's trigger: the transport's own (one NOTIFY per statement, on the queue's
#: channel), which other programs' INSERTs fire and the transport's own connections skip
PG_TRIGGER = (
    "CREATE TRIGGER asynctask_notify AFTER INSERT ON {table} REFERENCING NEW TABLE AS inserted"
    " FOR EACH STATEMENT WHEN (current_setting('asynctask.notify', true) IS DISTINCT FROM"
    " 'off') EXECUTE FUNCTION asynctask.asynctask_notify()"
)


def pg_queue_copy(conn: Any, table: str, indexes: bool = True, trigger: bool = True) -> None:
    """Create ``table`` as a copy of the transport's queue table (made first if missing):
    its columns and defaults, with (``indexes``) every index and (``trigger``) the
    NOTIFY trigger, so a raw INSERT does the same work per row as a submit's task row."""
    from asynctask_pgsql.schema import migrate

    migrate(conn, "asynctask")
    like = "INCLUDING ALL" if indexes else "INCLUDING DEFAULTS INCLUDING CONSTRAINTS"
    conn.execute(f"CREATE TABLE {table} (LIKE {PG_QUEUE_TABLE} {like})")
    if trigger:
        conn.execute(PG_TRIGGER.format(table=table))


class PgRaw(RawClient):
    """psycopg on a copy of the queue table (its columns, indexes and NOTIFY trigger),
    autocommit: each call commits. A row is what a submit writes into the queue table
    (a task id made by the client, the queue's name, the payload); the raw client writes
    no status row (``asynctask_status``), which a submit also writes."""

    name = "pgsql"
    labels: ClassVar[dict[str, str]] = {
        "submit_one": "INSERT, committed, same indexes+trigger",
        "submit_batch": "multi-row INSERT, same indexes+trigger",
        "drain": "DELETE SKIP LOCKED loop",
        "latency": "LISTEN wake-up",
    }

    def __init__(self, target: str) -> None:
        import psycopg

        super().__init__(target)
        self.conn = psycopg.connect(pg_conninfo(), autocommit=True)
        self.insert = f"INSERT INTO {target} (task_id, queue_name, payload) VALUES (%s, %s, %s)"
        self.take = (
            f"DELETE FROM {target} WHERE id = (SELECT id FROM {target} ORDER BY id "
            "FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING payload"
        )

    def create(self) -> None:
        pg_queue_copy(self.conn, self.target)

    def submit_one(self, payloads: Sequence[Payload]) -> None:
        execute, insert, queue = self.conn.execute, self.insert, self.target
        for payload in payloads:
            execute(insert, (uuid.uuid4(), queue, json.dumps(payload)), prepare=True)

    def submit_bulk(self, payloads: Sequence[Payload], batch: int) -> None:
        for chunk in _chunks(payloads, batch):
            values = ", ".join(["(%s, %s, %s)"] * len(chunk))
            params: list[Any] = []
            for payload in chunk:
                params += [uuid.uuid4(), self.target, json.dumps(payload)]
            self.conn.execute(
                f"INSERT INTO {self.target} (task_id, queue_name, payload) VALUES {values}", params
            )

    def send(self, payload: Payload) -> None:
        # The copied trigger sends the NOTIFY (on the transport's channel of a queue named
        # after the table), committed with the row, as a transport's submit does.
        self.submit_one([payload])

    def _take_one(self) -> Any:
        row = self.conn.execute(self.take, prepare=True).fetchone()
        return None if row is None else row[0]  # psycopg decodes JSONB

    def drain(self, count: int) -> None:
        for _ in range(count):
            if self._take_one() is None:
                raise TimeoutError("the table ran dry")

    def listen(self, ledger: str, count: int, ready: Callable[[], None]) -> None:
        import psycopg

        listener = psycopg.connect(pg_conninfo(), autocommit=True)
        listener.execute(f'LISTEN "asynctask.{self.target}"')
        fd = _open_ledger(ledger)
        ready()
        seen = 0
        try:
            while seen < count:
                for _ in listener.notifies(timeout=60, stop_after=1):
                    break
                else:
                    raise TimeoutError("no notification within 60 s")
                while (payload := self._take_one()) is not None:
                    _note(fd, payload)
                    seen += 1
        finally:
            os.close(fd)
            listener.close()

    def destroy(self) -> None:
        self.conn.execute(f"DROP TABLE IF EXISTS {self.target}")
        self.conn.close()


# -- amqp ------------------------------------------------------------------------------


#: the window of unacknowledged messages of the raw consumer: our children's on AMQP (the
#: adaptive window's start and largest, which a no-op drain keeps)
AMQP_PREFETCH = int(BenchNoopWorker.prefetch or AmqpTransport.default_prefetch)


class AmqpRaw(RawClient):
    """kombu (py-amqp) on one durable queue: persistent messages, publisher confirms."""

    name = "amqp"
    labels: ClassVar[dict[str, str]] = {
        "submit_one": "publish, confirmed",
        "submit_batch": "publish, confirms pipelined",
        "drain": f"consume+ack, prefetch {AMQP_PREFETCH}",
        "latency": "consume wake-up",
    }

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.kombu = kombu_module()
        self.conn = amqp_connection(confirm_publish=True)
        self.queue = self.kombu.Queue(
            target, self.kombu.Exchange(""), routing_key=target, durable=True
        )
        self.producer = self.kombu.Producer(self.conn.channel())

    def create(self) -> None:
        self.queue(self.conn.default_channel).declare()

    def _publish(self, payload: Payload) -> None:
        self.producer.publish(
            json.dumps(payload),
            routing_key=self.target,
            delivery_mode=2,
            content_type="application/json",
            content_encoding="utf-8",
            retry=False,
        )

    def submit_one(self, payloads: Sequence[Payload]) -> None:
        for payload in payloads:
            self._publish(payload)  # returns once the broker confirmed it

    def submit_bulk(self, payloads: Sequence[Payload], batch: int) -> None:
        import amqp

        # kombu waits for each confirm; the bulk publishes a batch, then waits for its acks.
        conn = amqp_connection()
        channel = conn.channel()
        channel.confirm_select()
        confirmed: list[int] = [0]  # the highest tag confirmed (acks come in order here)
        channel.events["basic_ack"].add(
            lambda tag, multiple: confirmed.__setitem__(0, max(confirmed[0], tag))
        )
        sent = 0
        try:
            for chunk in _chunks(payloads, batch):
                for payload in chunk:
                    message = amqp.Message(
                        json.dumps(payload),
                        delivery_mode=2,
                        content_type="application/json",
                        content_encoding="utf-8",
                    )
                    channel.basic_publish(message, exchange="", routing_key=self.target)
                sent += len(chunk)
                while confirmed[0] < sent:
                    conn.drain_events(timeout=10)
        finally:
            conn.release()

    def _consume(self, count: int, on_payload: Callable[[Payload], None], wait: float) -> None:
        taken = [0]

        def on_message(message: Any) -> None:
            on_payload(json.loads(message.body))
            message.ack()
            taken[0] += 1

        channel = self.conn.channel()
        consumer = self.kombu.Consumer(channel, [self.queue], on_message=on_message)
        # the same window of unacknowledged messages as our workers' children
        consumer.qos(prefetch_count=AMQP_PREFETCH)
        with consumer:
            while taken[0] < count:
                self.conn.drain_events(timeout=wait)
        channel.close()

    def drain(self, count: int) -> None:
        self._consume(count, lambda payload: None, 5.0)

    def listen(self, ledger: str, count: int, ready: Callable[[], None]) -> None:
        fd = _open_ledger(ledger)
        self.conn.connect()
        ready()
        try:
            self._consume(count, lambda payload: _note(fd, payload), 60.0)
        finally:
            os.close(fd)

    def destroy(self) -> None:
        self.queue(self.conn.default_channel).delete()
        self.conn.release()


# -- files -----------------------------------------------------------------------------


class FilesRaw(RawClient):
    """Plain files in one folder: ``tmp/`` -> ``ready/`` -> ``claimed/`` -> gone."""

    name = "filesys"
    labels: ClassVar[dict[str, str]] = {
        "submit_one": "write+fsync+rename",
        "submit_batch": "write+fsync, rename, 1 dir fsync",
        "drain": "rename loop",
        "latency": "inotify wake-up",
    }

    def __init__(self, target: str) -> None:
        super().__init__(target)
        root = Path(target)
        self.tmp, self.ready, self.claimed = (str(root / d) for d in ("tmp", "ready", "claimed"))
        self.counter = 0

    def create(self) -> None:
        for folder in (self.tmp, self.ready, self.claimed):
            os.makedirs(folder, exist_ok=True)

    def _write(self, payload: Payload, fsync: bool) -> str:
        self.counter += 1
        name = f"{time.time_ns():020d}-{self.counter:08d}.json"
        fd = os.open(os.path.join(self.tmp, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, json.dumps(payload).encode())
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return name

    def _sync_ready(self) -> None:
        fd = os.open(self.ready, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _publish(self, names: list[str]) -> None:
        for name in names:
            os.rename(os.path.join(self.tmp, name), os.path.join(self.ready, name))

    def submit_one(self, payloads: Sequence[Payload]) -> None:
        for payload in payloads:
            self._publish([self._write(payload, True)])
            self._sync_ready()

    def submit_bulk(self, payloads: Sequence[Payload], batch: int) -> None:
        for chunk in _chunks(payloads, batch):
            self._publish([self._write(p, True) for p in chunk])
            self._sync_ready()

    def fill(self, payloads: Sequence[Payload], batch: int) -> None:
        self._publish([self._write(p, False) for p in payloads])

    def _take(self, name: str) -> Payload | None:
        path = os.path.join(self.claimed, name)
        try:
            os.rename(os.path.join(self.ready, name), path)
        except FileNotFoundError:
            return None  # another taker won it
        with open(path, "rb") as f:
            payload: Payload = json.loads(f.read())
        os.unlink(path)
        return payload

    def drain(self, count: int) -> None:
        taken = 0
        while taken < count:
            names = sorted(os.listdir(self.ready))
            if not names:
                raise TimeoutError("the folder ran dry")
            for name in names[: count - taken]:
                if self._take(name) is not None:
                    taken += 1

    def listen(self, ledger: str, count: int, ready: Callable[[], None]) -> None:
        import inotify_simple

        inotify = inotify_simple.INotify()
        inotify.add_watch(self.ready, inotify_simple.flags.MOVED_TO)
        fd = _open_ledger(ledger)
        ready()
        seen = 0
        try:
            while seen < count:
                events = inotify.read(timeout=60_000)
                if not events:
                    raise TimeoutError("no file within 60 s")
                for event in events:
                    payload = self._take(event.name)
                    if payload is not None:
                        _note(fd, payload)
                        seen += 1
        finally:
            os.close(fd)
            inotify.close()

    def destroy(self) -> None:
        shutil.rmtree(self.target, ignore_errors=True)


RAW: dict[str, type[RawClient]] = {
    cls.name: cls for cls in (LocalRaw, RedisRaw, PgRaw, AmqpRaw, FilesRaw)
}
