"""``amqp://``: tasks in durable RabbitMQ queues, consumed with manual acks (kombu, py-amqp).

Features
    Counts: ready, delayed, retrying, failed (AMQP cannot count unacknowledged messages,
    so ``in_flight`` is ``None``, and ``in_flight()`` raises ``NotSupportedError``: the
    broker keeps unacknowledged messages with the channel that received them and lets no
    other client read them; ``peek`` too, since a queue cannot be read without taking
    from it). ``failed_tasks`` with an ``offset`` takes offset + limit messages of the
    failed store unacknowledged and gives them back in place. The whole delivery
    contract across processes: a submit returns once the broker confirms it holds the
    tasks (publisher confirms, persistent messages); a consumer subscribes
    (``basic.consume``, prefetch = the consumer's ``prefetch``) and wakes on the
    delivery; the broker gives a dead consumer's tasks back when its connection closes
    or misses 3 heartbeats (``recovery_seconds`` = 3 x ``heartbeat``), and such a
    delivery counts as an attempt. A consumer keeps its connection in a relay process of
    its own (``asynctask_amqp.relay``), which answers the heartbeats whatever the
    worker's process does (a task holding the GIL), so a task is never given to another
    consumer while its worker lives, and closes the connection as soon as the worker
    dies. RabbitMQ's ``consumer_timeout`` (30 min by default) is the ceiling on one
    task's run time. Delays and retry back-off use one ladder of TTL queues per vhost
    (no broker plugin; ``asynctask_amqp.ladder``). Lost connections are reopened with
    back-off; a broker restart costs time, not tasks.
    Task statuses and global limits (``rate_scope: global``, ``max_running``) live in
    the store named by ``asynctask_state`` (redis, pgsql or filesys): the broker keeps
    no shared counters. A running slot there names its child's owner id, which the
    supervisor keeps alive in that store (queues with ``max_running`` only), so a killed
    child's slot comes back at once.
URI
    ``amqp://user:password@host:port/vhost`` (``amqps://`` for TLS, port 5671). Default
    host ``localhost``, port 5672, user and password ``guest`` (kombu's defaults). The
    vhost is the percent-decoded path; no path, ``/`` or ``//`` mean vhost ``/``.
    A cluster's nodes: ``amqp://u:p@h1:5672,h2,h3:5673/vhost``, tried in turn.
Options
    ``heartbeat`` (3 s, whole seconds), ``connect_timeout`` (5 s), ``confirm_timeout``
    (30 s), ``retry_timeout`` (15 s), ``relay`` (true: consumers connect from a relay
    process; false: from the worker's own process), ``queue_type`` (``classic``, or
    ``quorum``: the queues asynctask declares), ``delivery_limit`` (20: a quorum task
    queue's ``x-delivery-limit``); with ``amqps``: ``ssl_ca_certs``,
    ``ssl_certfile``, ``ssl_keyfile``, ``ssl_verify`` (true). Passed on to kombu /
    py-amqp as transport options: ``read_timeout``, ``write_timeout``, ``frame_max``,
    ``channel_max``, ``locale``, ``login_method``.
Storage
    Queue ``Q`` is a durable queue ``Q`` bound to a durable direct exchange ``Q`` with
    routing key ``Q`` (what ``kombu.SimpleQueue("Q")`` declares). A message is a task:
    its body the payload's JSON (``application/json``, UTF-8), persistent; asynctask
    keeps its id in ``message_id`` and ``x-asynctask-attempts`` / ``-submitted-at`` in
    headers, all optional, so publishing ``{"foo": 1}`` to exchange ``Q`` (routing key
    ``Q``) from any AMQP client submits a task. Beside it: ``Q.failed`` (the failed store,
    a plain durable queue), ``asynctask.ladder.<ms>`` (the rungs of the vhost's delay
    ladder, shared by every queue: ``x-message-ttl`` ms, then dead-lettered by routing
    key into the task's queue; declared, and expiring, as a whole, a week after its last
    use), ``asynctask.registry`` (one message
    per queue asynctask created, read by ``queues()``), ``asynctask.claim.<key>``
    (scheduler claims) and ``asynctask.released.Q.<id>`` (markers of tasks handed back
    untouched). See README.md.
"""

from __future__ import annotations

import dataclasses
import functools
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import amqp.exceptions

from asynctask.errors import (
    InvalidTaskError,
    InvalidURIError,
    NotSupportedError,
    TransportError,
)
from asynctask.status import EXPIRES_HEADER, StatusNotKept, SubmitOptions
from asynctask.transport import (
    Consumer,
    FailedTask,
    InFlightTask,
    QueueStats,
    Transport,
    TransportFeatures,
)
from asynctask.validation import Payload, is_valid_queue_name
from asynctask.window import AdaptivePrefetch
from asynctask_amqp.census import ready_counts
from asynctask_amqp.consumer import AmqpConsumer
from asynctask_amqp.ladder import SharedLadder, browse, side_channel, take_ids, take_unacked
from asynctask_amqp.link import (
    DRIVER_ERRORS,
    ConfirmsLost,
    Heartbeats,
    Link,
    LinkPool,
    Unroutable,
    tick_interval,
)
from asynctask_amqp.params import (
    DRIVER_OPTIONS,
    OPTIONS,
    ConnectionParams,
    is_connection_error,
    map_error,
    read_params,
    reply_code,
)
from asynctask_amqp.remote import RemoteConsumer
from asynctask_amqp.topology import (
    DUE,
    LADDERS,
    LONGEST_DELAY,
    MAX_DELAY,
    REGISTRY,
    Received,
    claim_name,
    claim_ttl_ms,
    failed_message,
    failed_name,
    read_failed,
    read_message,
    registry_entry,
    release_marker,
    remaining_wait,
    rung_names,
    settled_marker,
    task_message,
)

#: seconds a count trusts that an old per-queue ladder it found missing is still missing.
#: Nothing of this version declares one, so once gone it stays gone, unless a process of
#: an earlier version (a fleet upgraded one host at a time) delays a task meanwhile: its
#: tasks on that ladder are left out of this object's counts for at most this long.
#: Without it every ``queues()`` asked 2 more names a queue, each a 404 that the broker
#: answers by closing a channel (the costliest answer it gives).
OLD_LADDER_RECHECK = 600.0


class AmqpTransport(Transport):
    """Tasks in RabbitMQ; see the module docstring."""

    schemes: ClassVar[tuple[str, ...]] = ("amqp", "amqps")
    options_accepted = OPTIONS
    #: a window the consumers size themselves (``asynctask.window``): from 32, down
    #: as tasks get long (``window_budget``); a ``prefetch`` set by the worker class or
    #: the queue entry is a plain int, kept as it is
    default_prefetch = AdaptivePrefetch(32)
    #: a broker keeps no shared counters: global limits live in ``asynctask_state``'s store
    limits_in_state = True
    #: a task with ``expires`` carries EXPIRES_HEADER, and the consumers close their
    #: status feed: a store of ``asynctask_state`` that gives one (redis) lets a start
    #: go out without waiting (``Consumer.start``)
    starts_unwaited = True
    #: with the default heartbeat; an instance derives recovery_seconds from its own
    features = TransportFeatures(
        counts=frozenset({"ready", "delayed", "retrying", "failed"}),
        multiprocess=True,
        recovery_seconds=3.0 * OPTIONS["heartbeat"].default,
    )

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self.params = read_params(uri, self.options, self.driver_options)
        if self.options["max_priority"] and self.params.queue_type == "quorum":
            raise InvalidURIError(
                f"{self.safe_uri}: max_priority needs classic queues (RabbitMQ's quorum "
                "queues keep no priorities): drop max_priority or queue_type=quorum"
            )
        self.features = dataclasses.replace(
            type(self).features, recovery_seconds=3.0 * self.params.heartbeat
        )
        self._heartbeats = Heartbeats(tick_interval(self.params))
        self._pool = LinkPool(self.params, self._heartbeats)
        self._lock = threading.Lock()
        self._declared: set[str] = set()  # queues this object declared (or knows exist)
        self._resume: dict[str, int] = {}  # batch (by first task id) -> tasks confirmed
        self._claim_tokens: dict[str, int] = {}
        #: first rungs of old per-queue ladders found missing, when (``_counted_names``)
        self._no_old_ladder: dict[str, float] = {}
        self._ladder = SharedLadder(self.params.queue_type)
        #: consumers not closed yet; held here, so that a consumer dropped unclosed keeps
        #: its tasks (and its relay) until the transport closes, as a worker that holds
        #: them would
        self._consumers: set[Consumer] = set()

    def accepts_driver_option(self, name: str) -> bool:
        """kombu / py-amqp connection options that pass through (see the docstring)."""
        return name in DRIVER_OPTIONS

    # -- the boundary: a pooled link, driver errors mapped ----------------------------------

    @contextmanager
    def _session(self) -> Iterator[Link]:
        try:
            with self._pool.use() as link:
                try:
                    yield link
                except BaseException as exc:
                    recover(link, exc)
                    raise
        except DRIVER_ERRORS as exc:
            cause = exc.cause if isinstance(exc, ConfirmsLost) else exc
            raise map_error(cause, self.params) from exc

    def _passive(self, link: Link, name: str) -> int | None:
        """Ready messages of queue ``name``, or ``None`` if it does not exist."""
        try:
            return int(link.channel.queue_declare(name, passive=True).message_count)
        except amqp.exceptions.ChannelError as exc:
            if reply_code(exc) != 404:
                raise
            link.select_confirms()  # py-amqp reopened the channel the broker closed
            return None

    def _ensure_queue(self, link: Link, queue: str) -> None:
        """Declare ``queue``'s exchange, queue and binding; register a new queue."""
        if queue in self._declared:
            return
        existed = self._passive(link, queue) is not None
        channel = link.channel
        channel.exchange_declare(queue, "direct", durable=True, auto_delete=False)
        if not existed:
            # an existing queue is used as it is: an operator may have declared it with
            # arguments of their own (a quorum queue, a length limit...)
            arguments = queue_arguments(queue, self.params)
            if arguments:  # a quorum queue dead-letters past its delivery limit: there
                self._declare_once(link, failed_name(queue))
            levels = self.options["max_priority"]
            if levels:  # classic queues only (refused with quorum when the URI is read)
                arguments = {**(arguments or {}), "x-max-priority": levels}
            channel.queue_declare(queue, durable=True, auto_delete=False, arguments=arguments)
        channel.queue_bind(queue, exchange=queue, routing_key=queue)
        if not existed:
            # one entry per creation; queues() folds duplicates from racing creators
            self._declare_once(link, REGISTRY)
            link.publish("", REGISTRY, [registry_entry(queue)])
        with self._lock:
            self._declared.add(queue)

    def _declare_once(self, link: Link, name: str) -> None:
        """Declare a durable queue of ours (a failed store, the registry) unless this
        object knows it exists; one that exists is used as it is, whatever its type (a
        declare with other arguments would be refused, 406)."""
        if name in self._declared:
            return
        # asked on a channel of its own: a 404 closes the channel it is asked on, and
        # ``link``'s may be a consumer's, holding deliveries
        with side_channel(link) as side:
            try:
                side.queue_declare(name, passive=True)
                exists = True
            except amqp.exceptions.ChannelError as exc:
                if reply_code(exc) != 404:
                    raise
                exists = False
        if not exists:
            arguments = {"x-queue-type": "quorum"} if self.params.queue_type == "quorum" else None
            link.channel.queue_declare(name, durable=True, auto_delete=False, arguments=arguments)
        with self._lock:
            self._declared.add(name)

    def _forget(self, queue: str) -> None:
        with self._lock:
            self._declared.discard(queue)
            self._declared.discard(failed_name(queue))

    def to_ladder(
        self, link: Link, queue: str, kind: str, delay: float, messages: Sequence[Any]
    ) -> None:
        """Put tasks of ``queue`` on the vhost's ladder for ``delay`` seconds (``kind``:
        ``delay`` or ``retry``, what they are counted as meanwhile)."""
        self._ladder.publish(link, queue, kind, min(delay, MAX_DELAY), messages)

    def send_round(self, link: Link, queue: str, received: Received) -> bool:
        """Send a task that reached its queue before it is due round the delay ladder
        again; True if it was (the caller then acks the message it received)."""
        wait = remaining_wait(received, time.time())
        if not wait:
            return False
        keep = {DUE: received.headers[DUE]}
        self.to_ladder(
            link, queue, "delay", wait, [received.copy(attempts=received.attempts, extra=keep)]
        )
        return True

    def _old_ladder_counts(
        self, link: Link, queue: str, ladder: str, first: int | None
    ) -> list[tuple[str, int]]:
        """Ready messages of each rung of an old per-queue ladder, given its first rung's
        (``None``: there is no such ladder; its rungs were declared, and expire, together)."""
        if first is None:
            return []
        names = rung_names(queue, ladder)
        rest = ready_counts(link, names[1:])
        return [(names[0], first)] + [(n, rest[n] or 0) for n in names[1:]]

    def _store_failed(self, link: Link, queue: str, received: Received, error: str, n: int) -> None:
        """Put a copy of a task in the failed store (the caller then acks the original)."""
        name = failed_name(queue)
        self._declare_once(link, name)
        link.publish("", name, [failed_message(received, error, n)])

    # -- primitives -----------------------------------------------------------------------

    def _put(
        self,
        queue: str,
        tasks: Sequence[tuple[str, str]],
        delay: float,
        options: SubmitOptions,
    ) -> Sequence[str] | None:
        self._check_options(options)
        if delay > LONGEST_DELAY:
            raise InvalidTaskError(
                f"delay={delay:g} s is longer than a year, the amqp transport's longest "
                "delay; use a schedule for later runs"
            )
        batch = tasks[0][0]
        with self._lock:
            done = self._resume.pop(batch, 0)
        now = time.time()
        # past the longest rung, the task goes round the ladder until due (see DUE)
        due: dict[str, Any] = {DUE: now + delay} if delay > MAX_DELAY else {}
        if options.expires is not None:  # its start must ask the store (Consumer.start)
            due[EXPIRES_HEADER] = repr(float(options.expires))
        messages = [
            task_message(
                task_id,
                text,
                submitted_at=now,
                extra={**due, **self.task_headers(queue, task_id, text)},
                priority=options.priority,
            )
            for task_id, text in tasks
        ]
        with self._session() as link:
            for last_try in (False, True):
                self._ensure_queue(link, queue)
                try:
                    if delay > 0:
                        self.to_ladder(link, queue, "delay", delay, messages[done:])
                    else:
                        link.publish(queue, queue, messages[done:])
                    return None
                except Unroutable:
                    if last_try:
                        raise TransportError(f"queue {queue!r} vanished while submitting") from None
                    self._forget(queue)  # somebody deleted it: declare it again
                except ConfirmsLost as exc:
                    with self._lock:
                        if len(self._resume) > 1000:
                            self._resume.clear()
                        self._resume[batch] = done + exc.confirmed
                    raise
        return None

    def _check_options(self, options: SubmitOptions) -> None:
        """Refuse what this transport cannot honour, before anything is sent: a priority
        without ``max_priority``; ``expires`` or ``unique_key`` without a store of task
        statuses (``asynctask_state``), which alone can keep them."""
        if options.priority and not self.options["max_priority"]:
            raise InvalidTaskError(
                f"priority={options.priority} needs queues declared with x-max-priority: add "
                "the URI option max_priority=9 (new queues only; classic queues on RabbitMQ)"
            )
        if (options.expires is not None or options.unique_key is not None) and (
            self.external_state() is None
        ):
            raise StatusNotKept(
                f"{self!r} keeps no task status, which expires and unique_key need: set "
                "asynctask_state to the URI of a transport that does "
                "(e.g. ASYNCTASK_STATE=redis://127.0.0.1:6379/0)"
            )

    def _take(self, queue: str) -> Payload | None:
        with self._session() as link:
            while True:
                try:
                    message = link.channel.basic_get(queue, no_ack=False)
                except amqp.exceptions.ChannelError as exc:
                    if reply_code(exc) != 404:
                        raise
                    link.select_confirms()
                    return None
                if message is None:
                    return None
                received = read_message(message, self.max_payload_bytes)
                if self.send_round(link, queue, received):
                    link.channel.basic_ack(message.delivery_info["delivery_tag"])
                    continue
                if received.payload is None:
                    error = received.error or "undecodable message"
                    self._store_failed(link, queue, received, error, received.attempts)
                tag = message.delivery_info["delivery_tag"]
                if message.delivery_info["redelivered"]:  # tidy: its release marker, if any
                    released = link.channel.queue_delete(release_marker(queue, received.key))
                    marker = settled_marker(queue, received.key, received.attempts)
                    if not released and link.channel.queue_delete(marker):
                        link.channel.basic_ack(tag)  # settled after its connection was lost
                        continue
                link.channel.basic_ack(tag)
                if received.payload is not None:
                    return received.payload

    def _stats(self, queue: str) -> QueueStats:
        return self._stats_of(queue)[0]

    def _all_stats(self) -> list[QueueStats]:
        """One read of the registry and of the shared ladder, and every queue's counts
        asked at once (``census.ready_counts``): a few round trips, not 4 a queue."""
        return self._stats_of(None)

    def _stats_of(self, queue: str | None) -> list[QueueStats]:
        """The counts of ``queue``, or of every queue of the registry (``None``)."""
        with self._session() as link:
            if queue is None and self._passive(link, REGISTRY) is None:
                return []
            with side_channel(link) as side:
                entries = {queue: 0} if queue is not None else self._registered(link, side)
                # the ladder before the queues: a task moving from one to the other
                # meanwhile is counted twice rather than missed (a drain check must not
                # see it gone)
                census = self._ladder.census(link)
                asked = {name: self._counted_names(name) for name in entries}
                counts = ready_counts(link, [n for names in asked.values() for n in names if n])
                self._note_old_ladders([n for names in asked.values() for n in names[2:]], counts)
                if queue is None:
                    for name, tag in entries.items():
                        if counts[name] is None:
                            side.basic_ack(tag)  # deleted since: forget it
                # closing the side channel puts the registry entries kept back
            found = []
            for name, (_, failed, *firsts) in asked.items():
                ready = counts[name]
                if ready is None:  # a queue is declared before anything of it is stored
                    found.append(QueueStats(name, 0, 0, 0, None, 0))
                    continue
                shared = census.get(name, Counter())
                delayed, retrying = (
                    shared[kind]
                    + sum(
                        c for _, c in self._old_ladder_counts(link, name, kind, counts.get(first))
                    )
                    for kind, first in zip(LADDERS, firsts, strict=True)
                )
                found.append(QueueStats(name, ready, delayed, retrying, None, counts[failed] or 0))
            return found

    def _counted_names(self, queue: str) -> list[str]:
        """What a queue's counts read: the queue, its failed store, then the first rung
        of each old per-queue ladder (``LADDERS`` order) not found missing lately."""
        now = time.monotonic()
        firsts = [rung_names(queue, ladder)[0] for ladder in LADDERS]
        with self._lock:
            for name in firsts:
                if now - self._no_old_ladder.get(name, -OLD_LADDER_RECHECK) >= OLD_LADDER_RECHECK:
                    self._no_old_ladder.pop(name, None)
            firsts = [name if name not in self._no_old_ladder else "" for name in firsts]
        return [queue, failed_name(queue), *firsts]

    def _note_old_ladders(self, firsts: list[str], counts: dict[str, int | None]) -> None:
        """Remember which of the old per-queue ladders whose ``firsts`` rungs were asked
        ``counts`` found missing (see ``OLD_LADDER_RECHECK``)."""
        now = time.monotonic()
        with self._lock:
            for name in firsts:
                if name and counts.get(name, 0) is None:
                    self._no_old_ladder[name] = now

    def _registered(self, link: Link, side: Any) -> dict[str, int]:
        """The registry's queue names, each with the delivery tag of its entry, taken
        unacknowledged on ``side`` (duplicates, and names not ours, acked: removed)."""
        names: dict[str, int] = {}
        for message in take_unacked(link, side, REGISTRY):
            name = read_message(message).text
            tag = message.delivery_info["delivery_tag"]
            if name in names or not is_valid_queue_name(name):
                side.basic_ack(tag)  # a duplicate, or not ours
            else:
                names[name] = tag
        return names

    def _queue_names(self) -> list[str]:
        with self._session() as link:
            if self._passive(link, REGISTRY) is None:
                return []
            with side_channel(link) as side:
                entries = self._registered(link, side)
                exists = ready_counts(link, entries)
                for name, tag in entries.items():
                    if exists[name] is None:
                        side.basic_ack(tag)  # deleted since: forget it
                # closing the side channel puts the entries kept back into the registry
            return [name for name in entries if exists[name] is not None]

    def _purge(self, queue: str) -> int:
        store = self.external_state()
        purged: list[str] = []  # (the ladder's, with asynctask_state)
        # (after the messages are gone: see _purged_elsewhere)
        forget = functools.partial(self._forget_purged, queue)
        with self._session() as link:
            if self._passive(link, queue) is None:
                return 0
            if store is None:
                total = int(link.channel.queue_purge(queue) or 0)
                total += self._ladder.purge(link, queue)
            else:  # the ids, whose statuses the store must forget, a chunk at a time
                with side_channel(link) as side:
                    total = take_ids(link, side, queue, forget)
                for owner, _, message in self._ladder.walk(link, take=queue):
                    if owner == queue:
                        purged.append(_message_id(message))
                total += len(purged)
            for ladder in LADDERS:
                first = self._passive(link, rung_names(queue, ladder)[0])
                for name, count in self._old_ladder_counts(link, queue, ladder, first):
                    if count and store is None:
                        total += int(link.channel.queue_purge(name) or 0)
                    elif count:
                        with side_channel(link) as side:
                            total += take_ids(link, side, name, forget)
        if store is not None:
            forget(purged)
        return total

    def _failed(self, queue: str, limit: int, offset: int) -> list[FailedTask]:
        # A queue is read from its head only: a page after ``offset`` takes offset + limit
        # messages unacknowledged (given back in place when the side channel closes), and
        # keeps and decodes the page's alone.
        with self._session() as link:
            name = failed_name(queue)
            if self._passive(link, name) is None:
                return []
            with side_channel(link) as side:
                page = browse(side, name, limit, skip=offset)
                return [read_failed(queue, message) for message in page]

    def _in_flight(self, queue: str, limit: int, offset: int) -> list[InFlightTask]:
        raise NotSupportedError(
            f"{self!r} cannot list the tasks its consumers hold (in_flight): RabbitMQ keeps "
            "an unacknowledged message with the channel that received it and lets no other "
            "client read it; queue_stats() cannot count them either (the management UI "
            "shows them per channel)"
        )

    @property
    def can_list_in_flight(self) -> bool:
        """False: see ``_in_flight``."""
        return False

    def _requeue_failed(self, queue: str, ids: Sequence[str] | None) -> int:
        with self._session() as link:
            name = failed_name(queue)
            if self._passive(link, name) is None:
                return 0
            self._ensure_queue(link, queue)
            with side_channel(link) as side:
                chosen = chosen_from(browse(side, name), ids)
                if chosen:
                    copies = [read_message(message).copy(attempts=0) for message in chosen]
                    store = self.external_state()
                    if store is not None:  # queued again before a worker can start it
                        for copy in copies:
                            store.settled(queue, copy.properties["message_id"], "queued", 0)
                    link.publish(queue, queue, copies)
                for message in chosen:
                    side.basic_ack(message.delivery_info["delivery_tag"])
            return len(chosen)

    def _purge_failed(self, queue: str, ids: Sequence[str] | None) -> int:
        store = self.external_state()
        with self._session() as link:
            name = failed_name(queue)
            if self._passive(link, name) is None:
                return 0
            if ids is None and store is None:
                return int(link.channel.queue_purge(name) or 0)
            if ids is None:  # the ids, whose failed statuses the store must forget
                with side_channel(link) as side:
                    return take_ids(link, side, name, functools.partial(self._forget_purged, queue))
            else:
                with side_channel(link) as side:
                    chosen = chosen_from(browse(side, name), ids)
                    for message in chosen:
                        side.basic_ack(message.delivery_info["delivery_tag"])
                purged = [_message_id(message) for message in chosen]
        if store is not None:
            self._forget_purged(queue, purged)
        return len(purged)

    def _forget_purged(self, queue: str, ids: list[str]) -> None:
        """``_purged_elsewhere`` of the ids a purge read ('' for a foreign message)."""
        self._purged_elsewhere(queue, [i for i in ids if i])

    def _claim(self, key: str, ttl: float) -> bool:
        # A durable queue named after the key, expiring after ttl (x-expires), stands for
        # the claim. Declaring is create-if-absent, and the broker refuses (406) a declare
        # whose arguments differ from the existing queue's, so a random x-max-length
        # (meaningless on a queue that never holds a message) is the claimer's token:
        # only the declare that created the queue succeeds. A retried call after a lost
        # connection reuses its token, so a claim that did reach the broker is still won.
        with self._lock:
            token = self._claim_tokens.setdefault(key, secrets.randbits(62))
        arguments = {"x-expires": claim_ttl_ms(ttl), "x-max-length": token}
        with self._session() as link:
            try:
                link.channel.queue_declare(
                    claim_name(key), durable=True, auto_delete=False, arguments=arguments
                )
                won = True
            except amqp.exceptions.ChannelError as exc:
                if reply_code(exc) != 406:
                    raise
                link.select_confirms()
                won = False
        with self._lock:
            self._claim_tokens.pop(key, None)
        return won

    def _consumer(self, queue: str, prefetch: int) -> Consumer:
        """A consumer whose connection lives in a relay process (``relay=false``: here)."""
        consumer: Consumer
        if self.params.relay:
            consumer = RemoteConsumer(self, queue, prefetch)
        else:
            consumer = AmqpConsumer(self, self, queue, prefetch)
        with self._lock:
            self._consumers = {c for c in self._consumers if not c.closed}
            self._consumers.add(consumer)
        return consumer

    def _close(self) -> None:
        with self._lock:
            consumers, self._consumers = self._consumers, set()
        for consumer in consumers:
            consumer.close()
        self._pool.close()
        self._heartbeats.stop()


# -- helpers shared with the consumer -----------------------------------------------------


def queue_arguments(queue: str, params: ConnectionParams) -> dict[str, Any] | None:
    """The arguments asynctask declares a task queue with: none for a classic queue; a
    quorum queue gets the broker's delivery limit as a second poison guard (a task
    delivered that many times goes to the failed store, however its workers died)."""
    if params.queue_type != "quorum":
        return None
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": params.delivery_limit,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": failed_name(queue),
    }


def recover(link: Link, exc: BaseException) -> None:
    """After ``exc`` on ``link``: drop a dead connection, or reopen a closed channel."""
    cause = exc.cause if isinstance(exc, ConfirmsLost) else exc
    if is_connection_error(cause):
        link.broken = True
    elif isinstance(cause, amqp.exceptions.ChannelError) and link.is_open:
        try:
            link.select_confirms()
        except Exception:
            link.broken = True


def _message_id(message: Any) -> str:
    """A message's task id ('' for a foreign message without one: no status)."""
    return str(message.properties.get("message_id") or "")


def chosen_from(messages: list[Any], ids: Sequence[str] | None) -> list[Any]:
    """The messages whose task id is in ``ids`` (all when ``ids`` is None)."""
    if ids is None:
        return messages
    wanted = set(ids)
    return [m for m in messages if str(m.properties.get("message_id")) in wanted]
