"""The delay ladder every queue of a vhost shares: TTL queues that hold a task until due.

AMQP has no delayed delivery without a plugin. A rung is a queue whose messages wait
``x-message-ttl`` ms and then dead-letter through the default exchange, keeping the
routing key they were published with: the name of their task queue. So one ladder serves
every queue of the vhost (3 task queues: 3 + 22 broker queues, not 3 x 45). A message
reaches its rung through the headers exchange ``asynctask.ladder``, which routes on the
header ``asynctask-rung`` (the rung's milliseconds) whatever the routing key is.

What a shared ladder costs: the broker cannot count one queue's messages in a rung, so a
count (``delayed``, ``retrying``) or a purge reads the rungs that hold anything, on a
channel of its own, and puts back what is not the queue's (see ``walk``): time in
proportion to the tasks waiting in the whole vhost, and two such reads at the same moment
each miss what the other holds for that moment (as failed-store listings do).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from asynctask_amqp.census import ready_counts
from asynctask_amqp.link import Link, Unroutable
from asynctask_amqp.topology import LADDER_EXPIRY_MS, LADDER_RENEW, RUNGS, rung_for

#: the headers exchange that routes a message to its rung
LADDER_EXCHANGE = "asynctask.ladder"
#: the header the exchange routes on: ``<ms>`` (``quorum.<ms>`` on the quorum ladder). Not
#: ``x-`` prefixed: a headers exchange ignores those.
RUNG_HEADER = "asynctask-rung"
#: what a task on the ladder waits for: ``delay`` (submitted with one) or ``retry``
WAITING = "x-asynctask-waiting"
#: the kinds of wait, as counted: ``QueueStats.delayed`` and ``.retrying``
KINDS = ("delay", "retry")


def rung_queue(rung: float, queue_type: str) -> str:
    """``asynctask.ladder.<ms>`` (``asynctask.ladder_quorum.<ms>``): one shared rung."""
    prefix = "asynctask.ladder" if queue_type == "classic" else f"asynctask.ladder_{queue_type}"
    return f"{prefix}.{round(rung * 1000)}"


def rung_key(rung: float, queue_type: str) -> str:
    """The ``asynctask-rung`` header value that routes to ``rung_queue(rung, ...)``."""
    ms = str(round(rung * 1000))
    return ms if queue_type == "classic" else f"{queue_type}.{ms}"


def rung_arguments(rung: float, queue_type: str) -> dict[str, Any]:
    """A shared rung's arguments: TTL, dead-lettering by routing key, expiry when idle.

    A quorum rung dead-letters at least once (RabbitMQ 3.10+): a broker crash at that
    moment cannot lose the task, which a classic rung may.
    """
    arguments: dict[str, Any] = {
        "x-message-ttl": round(rung * 1000),
        # the default exchange routes by queue name and cannot be deleted; without
        # x-dead-letter-routing-key the message keeps its own: its task queue's name
        "x-dead-letter-exchange": "",
        "x-expires": LADDER_EXPIRY_MS,
    }
    if queue_type == "quorum":
        arguments |= {
            "x-queue-type": "quorum",
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",  # what at-least-once dead-lettering needs
        }
    return arguments


@contextmanager
def side_channel(link: Link) -> Iterator[Any]:
    """A second channel for browsing: closing it gives back what it did not ack, in order."""
    channel = link.connection.channel()
    try:
        yield channel
    finally:
        if link.is_open and channel.is_open:
            channel.close()


def browse(channel: Any, queue: str, limit: int | None = None, skip: int = 0) -> list[Any]:
    """Take up to ``limit`` messages from the head of ``queue`` without acking them, after
    passing ``skip`` more: a queue is read from its head only, and a page deep in it keeps
    none of the messages it passes (they stay the channel's, unacknowledged)."""
    for _ in range(skip):
        if channel.basic_get(queue, no_ack=False) is None:
            return []
    messages: list[Any] = []
    while limit is None or len(messages) < limit:
        message = channel.basic_get(queue, no_ack=False)
        if message is None:
            break
        messages.append(message)
    return messages


#: how long ``take_unacked`` waits for the next message once it has what the queue held
TAKE_IDLE = 0.5


def take_unacked(link: Link, channel: Any, queue: str) -> list[Any]:
    """Every message of ``queue``, taken unacknowledged on ``channel`` (a side channel of
    ``link``, whose lock the caller holds): the caller acks what it removes, and closing
    the channel gives the rest back in place.

    A consumer without a prefetch limit, not one ``basic.get`` per message: the broker
    streams them instead of a round trip for each (measured on RabbitMQ 3.10, a 2-core
    machine at load 13: ``queue_stats`` of a queue with 10,000 tasks of other queues on
    the ladder took 6.4 s with ``basic.get``, 2.9 s this way; 1,000: 0.67 s, 0.28 s).
    It stops once it holds what a passive declare counted, or when nothing more has come
    for ``TAKE_IDLE`` seconds (a message that expired meanwhile is not coming).
    """
    expected = int(channel.queue_declare(queue, passive=True).message_count)
    taken: list[Any] = []
    if not expected:
        return taken
    channel.basic_qos(0, 0, False)  # no prefetch limit: nothing is acked until the end
    tag = channel.basic_consume(queue, no_ack=False, callback=taken.append)
    try:
        last = (len(taken), time.monotonic())
        while len(taken) < expected and time.monotonic() - last[1] < TAKE_IDLE:
            link.wait(TAKE_IDLE / 5)
            if len(taken) != last[0]:
                last = (len(taken), time.monotonic())
    finally:
        channel.basic_cancel(tag)
    return taken


#: messages a purge that must learn their task ids holds at once (``take_ids``)
PURGE_CHUNK = 500


def take_ids(link: Link, channel: Any, queue: str, each: Callable[[list[str]], None]) -> int:
    """Remove every message ``queue`` holds now, ``PURGE_CHUNK`` at a time, and hand each
    chunk's task ids ('' for a foreign message without one) to ``each`` once the broker
    has removed them; return how many were removed.

    For a purge whose statuses live in ``asynctask_state`` (``queue_purge`` says how many
    it deleted, not which). The broker streams them to a consumer on ``channel`` (a side
    channel of ``link``, whose lock the caller holds), at most a chunk unacknowledged
    (``basic.qos``): memory in proportion to the chunk, not the queue, and only the ids
    are kept. A chunk is acknowledged in one frame (``multiple``); the ``basic.qos``
    after it is answered once the broker has applied that ack, so ``each`` forgets
    statuses only of tasks that are gone. Before, every message was held, then acked one
    frame each. Stops as ``take_unacked`` does.
    """
    expected = int(channel.queue_declare(queue, passive=True).message_count)
    if not expected:
        return 0
    chunk = PURGE_CHUNK
    ids: list[str] = []
    newest = [0]  # the delivery tag of the last message taken

    def taken(message: Any) -> None:
        ids.append(str(message.properties.get("message_id") or ""))
        newest[0] = message.delivery_info["delivery_tag"]

    done = 0

    def settle() -> None:
        nonlocal done
        batch = ids[:]  # (those delivered while the qos below waits are the next chunk's)
        ids.clear()
        channel.basic_ack(newest[0], multiple=True)
        channel.basic_qos(0, chunk, False)  # (a round trip: the ack is applied first)
        done += len(batch)
        each(batch)

    channel.basic_qos(0, chunk, False)
    tag = channel.basic_consume(queue, no_ack=False, callback=taken)
    try:
        last = (0, time.monotonic())
        while done + len(ids) < expected and time.monotonic() - last[1] < TAKE_IDLE:
            link.wait(TAKE_IDLE / 5)
            if len(ids) >= chunk:
                settle()
            if done + len(ids) != last[0]:
                last = (done + len(ids), time.monotonic())
    finally:
        channel.basic_cancel(tag)
    if ids:  # (and those delivered before the cancel was answered)
        settle()
    return done


class SharedLadder:
    """The vhost's ladder of one queue type, as one transport object declares and reads it.

    The rungs are declared together on first use, again at most every ``LADDER_RENEW``
    seconds while in use, and expire together (``x-expires``) long after their last use
    (see ``topology.LADDER_EXPIRY_MS``), so the first rung tells whether the ladder exists.
    """

    def __init__(self, queue_type: str) -> None:
        self.queue_type = queue_type
        self.names = [rung_queue(rung, queue_type) for rung in RUNGS]
        self._lock = threading.Lock()
        self._declared_at: float | None = None

    def declare(self, link: Link, *, force: bool = False) -> None:
        """Declare the exchange and every rung with its binding, if due."""
        now = time.monotonic()
        with self._lock:
            due = force or self._declared_at is None or now - self._declared_at >= LADDER_RENEW
        if not due:
            return
        channel = link.channel
        channel.exchange_declare(LADDER_EXCHANGE, "headers", durable=True, auto_delete=False)
        for rung, name in zip(RUNGS, self.names, strict=True):
            channel.queue_declare(
                name,
                durable=True,
                auto_delete=False,
                arguments=rung_arguments(rung, self.queue_type),
            )
            channel.queue_bind(
                name,
                exchange=LADDER_EXCHANGE,
                routing_key="",
                arguments={"x-match": "all", RUNG_HEADER: rung_key(rung, self.queue_type)},
            )
        with self._lock:
            self._declared_at = now

    def forget(self) -> None:
        """The ladder may be gone (a rung refused a message): declare it again next time."""
        with self._lock:
            self._declared_at = None

    def publish(
        self, link: Link, queue: str, kind: str, delay: float, messages: Sequence[Any]
    ) -> None:
        """Put ``messages`` of ``queue`` on the rung ``delay`` waits on (``kind``: delay or
        retry); confirmed, as every publish of ours."""
        headers = {RUNG_HEADER: rung_key(rung_for(delay), self.queue_type), WAITING: kind}
        for message in messages:
            message.properties.setdefault("application_headers", {}).update(headers)
        for last_try in (False, True):
            self.declare(link, force=last_try)
            try:
                link.publish(LADDER_EXCHANGE, queue, messages)
                return
            except Unroutable:
                if last_try:
                    raise
                # a rung expired or was deleted since we declared the ladder
                self.forget()

    def census(self, link: Link) -> dict[str, Counter[str]]:
        """Tasks waiting on the ladder, by task queue, then by kind (delay, retry)."""
        counts: dict[str, Counter[str]] = {}
        for queue, kind, _ in self.walk(link, take=None):
            counts.setdefault(queue, Counter())[kind] += 1
        return counts

    def purge(self, link: Link, queue: str) -> int:
        """Remove every task of ``queue`` from the ladder; return how many."""
        return sum(1 for owner, _, _ in self.walk(link, take=queue) if owner == queue)

    def walk(self, link: Link, take: str | None) -> Iterator[tuple[str, str, Any]]:
        """Each message on the ladder as (task queue, kind, message), reading only the
        rungs that hold anything; those of queue ``take`` are acknowledged (removed), the
        others go back in their place when the side channel closes. The TTL a message
        had left is kept: a requeued message keeps its expiry time (RabbitMQ's TTL
        guide), so a read delays nothing beyond the moment it holds the message."""
        counts = ready_counts(link, self.names)  # (none: no ladder, or it expired)
        busy = [name for name in self.names if counts[name]]
        if not busy:
            return
        with side_channel(link) as side:
            for name in busy:
                for message in take_unacked(link, side, name):
                    queue = str(message.delivery_info.get("routing_key", ""))
                    headers = message.properties.get("application_headers") or {}
                    kind = "retry" if headers.get(WAITING) == "retry" else "delay"
                    if queue == take:
                        side.basic_ack(message.delivery_info["delivery_tag"])
                    yield queue, kind, message
