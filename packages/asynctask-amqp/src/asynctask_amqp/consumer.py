"""``AmqpConsumer``: one connection subscribed to one queue, with manual acknowledgement.

Attempts. ``x-asynctask-attempts`` counts the deliveries of a task that ended in failure
or with a dead worker; a delivery's ``attempt`` is that plus one. The broker marks a
message it gives back ``redelivered``, whatever the reason, so:

* a consumer that hands a task back untouched (``release``, ``close``) first leaves a
  marker queue ``asynctask.released.<queue>.<id>`` holding one message;
* a consumer that receives a redelivered message deletes that marker (one round trip,
  atomic: only one deleter sees its message). Found: the task was released, and is
  delivered as it is. Not found: its last consumer died or lost its connection, which
  counts as an attempt; the consumer publishes a copy with the count bumped to the tail
  of the queue (confirmed) and acks the original, so a task that kills every worker
  still ends in the failed store. The copy waits its turn, as a retry would.

Connections. The consumer's link is pumped by the transport's heartbeat thread while the
worker runs a task, and by ``reserve`` itself while it waits. When the connection is
lost, ``reserve`` reconnects with back-off (within its timeout). The broker takes back
the tasks held on a lost connection and marks them redelivered; a settle call on such a
task still does what it says, on a new connection (retrying up to ``retry_timeout``):

* ``release`` leaves the release marker (the redelivery is delivered as it is);
* ``ack`` leaves a marker queue ``asynctask.settled.<queue>.<id>.<attempts>`` holding
  one message; ``retry`` and ``fail`` first publish their copy (retry ladder, failed
  store), then leave that marker. A consumer that receives a redelivered message with no
  release marker deletes the settled marker of its id and attempt count: found, the task
  was settled, and the message is acknowledged and dropped.
* the settling consumer itself drops that redelivery at once (``_sweep``): the broker
  put it back at the head of the queue, so it takes the head while it is one of its own
  settled tasks, and hands back the first that is not.

The markers name the attempt count, which only grows, so a marker left after another
consumer had already taken the redelivery (and counted it: its copy has the next count)
never matches a later delivery. Such a consumer runs the task again: the settle came
too late, and that task runs twice (at most the tasks in flight on the lost connection).
A worker's consumer runs in a relay process (see ``asynctask_amqp.relay``), so that its
heartbeats go on while the task holds the GIL.

Imports run one way: the transport module imports this one, and gives each consumer what
it needs of the transport (``Declarations``) through the constructor.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import amqp

from asynctask.errors import TransportClosed, TransportError, TransportUnavailable
from asynctask.status import StartVerdict
from asynctask.transport import Consumer, Delivery, Transport, check_delay
from asynctask.window import AdaptivePrefetch, Window
from asynctask_amqp.failing import REDELIVERED, fail_in_order, in_order, start_redelivered
from asynctask_amqp.link import DRIVER_ERRORS, Heartbeats, Link
from asynctask_amqp.params import ConnectionParams, map_error
from asynctask_amqp.topology import (
    RELEASE_MARKER_EXPIRY_MS,
    Received,
    read_message,
    release_marker,
    settled_marker,
)

logger = logging.getLogger("asynctask.amqp")


def hand_back(channel: amqp.Channel, tag: int) -> None:
    """Give one delivery back to its place in the queue, as not failed: ``basic.nack``
    with requeue, never ``basic.reject``.

    A hand-back is a task this consumer did not run (released, prefetched behind it, met
    by a sweep). From RabbitMQ 4.3 a quorum queue counts a ``basic.reject`` with requeue
    as a failed delivery toward its ``x-delivery-limit`` (the poison guard), and a
    ``basic.nack`` not; before, the two are the same command and both count (3.10.8,
    measured: a closed channel's returns do not), the bound in the README's Quorum
    queues. py-amqp has no ``basic_nack``: the method is sent as it is."""
    channel.send_method(amqp.spec.Basic.Nack, "Lbb", (tag, False, True))


#: a delivery's receipt: (link generation, delivery tag, the message read)
Receipt = tuple[int, int, Received]

#: the most redeliveries a consumer remembers to sweep (``AmqpConsumer._sweep``); past
#: it, their markers alone have them dropped
SETTLED_AWAY_MOST = 1000


class Declarations(Protocol):
    """What a consumer asks of its transport, which remembers what it declared (queues,
    ladders, failed stores) for its producers and consumers alike."""

    params: ConnectionParams
    _heartbeats: Heartbeats

    def _ensure_queue(self, link: Link, queue: str) -> None: ...

    def _forget(self, queue: str) -> None: ...

    def _store_failed(
        self, link: Link, queue: str, received: Received, error: str, n: int
    ) -> None: ...

    def to_ladder(
        self, link: Link, queue: str, kind: str, delay: float, messages: Sequence[Any]
    ) -> None: ...

    def send_round(self, link: Link, queue: str, received: Received) -> bool: ...


class AmqpConsumer(Consumer):
    """At-least-once consumer of one queue; see the module docstring."""

    def __init__(
        self,
        transport: Transport,
        declarations: Declarations,
        queue: str,
        prefetch: int,
        owner: int | None = None,
        on_generation: Callable[[int], None] | None = None,
    ) -> None:
        """``declarations`` is the transport itself; ``owner`` the pid of the worker this
        consumer serves (this process's by default), named in the connection's name;
        ``on_generation`` is told each connection's generation when it opens, and 0 when
        it is found lost (``Link.on_generation``: a relay publishes it to its worker)."""
        super().__init__(transport, queue, int(prefetch))
        #: sizes the window from the tasks' run time when the prefetch is the transport's
        #: default (``asynctask.window``); None: the prefetch is the user's, fixed
        self.window: Window | None = None
        if isinstance(prefetch, AdaptivePrefetch):
            self.window = Window(int(prefetch), declarations.params.window_budget)
        self._qos = 0  # the prefetch last asked of the broker on this connection
        self._declarations = declarations
        owner = os.getpid() if owner is None else owner
        # the host too: hosts' PID spaces overlap (every container's first process is 1)
        name = f"asynctask consumer {queue} (pid {owner} on {socket.gethostname()})"
        self._link = Link(declarations.params, name)
        self._link.on_generation = on_generation
        self._generation = 0  # the link generation we set up (0: none)
        self._buffer: deque[Any] = deque()  # delivered, not reserved yet
        self._held: dict[int, Received] = {}  # reserved, not settled, by delivery tag
        self._tag = ""  # our consumer tag while subscribed
        #: (key, attempts) of the tasks this consumer settled after losing the connection
        #: that held them, whose redelivery it has not dropped yet (``_sweep``)
        self._settled_away: set[tuple[str, int]] = set()

    # -- taking -----------------------------------------------------------------------------

    def reserve(self, timeout: float) -> Delivery | None:
        """Wait up to ``timeout`` s for a task (reconnecting while the broker is away)."""
        self._check_open()
        deadline = time.monotonic() + max(0.0, timeout)
        pause = 0.05
        flushed = not self.has_status_feed
        while True:
            flush = False
            with self._link.lock:
                self._check_open()  # the transport may close us from another thread
                try:
                    if not self._connected():
                        self._connect()
                        self.transport.note_recovery()
                    elif self.window is not None:
                        self._adapt(())
                    pumped = False
                    while True:
                        delivery = self._next()
                        if delivery is not None:
                            return delivery
                        if not self._tag:
                            self._subscribe()
                            continue
                        if not pumped:
                            # read what has arrived: reserve(0) finds every prefetched
                            # task, and a status feed's writes wait for a real wait
                            self._link.pump()
                            pumped = True
                            continue
                        if not flushed:
                            # nothing here: the statuses a status feed holds go now,
                            # outside the lock (Redis may be slow: the heartbeats go on)
                            flush = flushed = True
                            break
                        left = deadline - time.monotonic()
                        if left <= 0:
                            return None
                        self._link.wait(min(left, self._declarations._heartbeats.interval))
                except DRIVER_ERRORS as exc:
                    error = self._lost(exc)
                    if not isinstance(error, TransportUnavailable):
                        raise error from exc
                    self.transport.note_outage(error)
            if flush:
                self.flush_status_feed()
                continue
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                return None
            time.sleep(min(pause, left))
            pause = min(pause * 2, 2.0)

    def take(self, most: int) -> list[Delivery]:
        """What the broker has delivered, up to ``most``, without waiting: one read of
        the connection (``Link.pump``), then the buffer. A relay's pull between its
        worker's requests: ``reserve(0)`` a task read the connection again for each
        and once more to find nothing. Nothing while not connected and subscribed (the
        next ``reserve`` connects); a lost connection is an error, as ``reserve``'s."""
        self._check_open()
        taken: list[Delivery] = []
        with self._link.lock:
            if not self._tag or not self._connected():
                return taken
            try:
                self._link.pump()
                while len(taken) < most:
                    delivery = self._next()
                    if delivery is None:
                        break
                    taken.append(delivery)
            except DRIVER_ERRORS as exc:
                error = self._lost(exc)
                if not isinstance(error, TransportUnavailable):
                    raise error from exc
                self.transport.note_outage(error)
        return taken

    def adapt(self, unstarted: Sequence[Delivery] = ()) -> bool:
        """Resize an adaptive window (``self.window``) if its estimate asks for it; True
        if it handed back ``unstarted`` (a relay's ready tasks, never handed over).

        RabbitMQ applies a consumer's prefetch (``basic.qos``, not global) when the
        consumer subscribes, so a resize is ``basic.cancel``, ``basic.qos``,
        ``basic.consume``. Smaller: first what was delivered and not started goes back
        to the head of the queue (marked released: no attempt, as ``release`` does), so
        that it does not wait behind long tasks past the budget; larger: what was
        delivered stays, and is delivered as it is."""
        if self.window is None or self.window.resize_to(self.prefetch) is None:
            return False
        with self._link.lock:
            return self._adapt(unstarted)

    def _adapt(self, unstarted: Sequence[Delivery]) -> bool:
        """``adapt``, holding the connection's lock."""
        if self.window is None:
            return False
        wanted = self.window.resize_to(self.prefetch)
        if wanted is None:
            return False
        smaller = wanted < self.prefetch
        self.prefetch = wanted
        if not self._tag or not self._connected():
            return False  # the next subscription asks for it
        logger.debug(
            "%r: window of %r now %d (tasks take %.3f s)",
            self.transport,
            self.queue,
            wanted,
            self.window.run_time or 0.0,
        )
        try:
            channel = self._link.channel
            prefetched = self._unsubscribe()
            if smaller:
                self._hand_back_unstarted(channel, prefetched, self._unstarted(unstarted))
                if not self._held:
                    self.window.idle()
            self._subscribe()
        except DRIVER_ERRORS as exc:
            error = self._lost(exc)
            if not isinstance(error, TransportUnavailable):
                raise error from exc
            self.transport.note_outage(error)
        return smaller

    def _hand_back_unstarted(
        self,
        channel: Any,
        prefetched: Sequence[Any],
        reserved: Sequence[tuple[int, Any]],
        first: Sequence[Any] = (),
    ) -> None:
        """Mark released ``first``, ``reserved`` and ``prefetched`` (no attempt counted),
        then hand back to the queue the buffer and ``reserved``, in the queue's order:
        what ``release`` and a shrinking window both give back."""
        for message in [*first, *(r for _, r in reserved), *prefetched]:
            self._mark_released(message)
        for message in self._buffer:
            hand_back(channel, message.delivery_info["delivery_tag"])
        self._buffer.clear()
        for held_tag, _ in reserved:
            hand_back(channel, held_tag)

    def _timed(self, count: int) -> None:
        """``count`` tasks were settled now: their run time feeds an adaptive window."""
        if self.window is not None:
            self.window.settled(count)
            if not self._held:
                self.window.idle()

    def delivering_socket(self) -> Any | None:
        """The connection's socket while the broker delivers to this consumer (connected
        and subscribed), for a relay to wait on beside its worker's; else None."""
        if not self._tag or not self._connected():
            return None
        return self._link.connection.transport.sock

    def has_frame(self) -> bool:
        """Whether the connection holds a whole frame read ahead, not read yet (a relay
        waiting on ``delivering_socket`` takes it first: the socket does not show it)."""
        return self._connected() and self._link.has_frame()

    def _connected(self) -> bool:
        return self._link.is_open and self._generation == self._link.generation

    def _connect(self) -> None:
        link = self._link
        link.open()
        self._declarations._heartbeats.add(link)
        self._buffer.clear()
        self._held.clear()
        self._tag = ""
        self._declarations._ensure_queue(link, self.queue)
        link.channel.basic_qos(0, self.prefetch, False)
        self._qos = self.prefetch
        self._generation = link.generation

    def _subscribe(self) -> None:
        if self._qos != self.prefetch:  # a window resized since (``adapt``)
            self._link.channel.basic_qos(0, self.prefetch, False)
            self._qos = self.prefetch
        self._tag = self._link.channel.basic_consume(
            self.queue, no_ack=False, callback=self._buffer.append
        )

    def _unsubscribe(self) -> list[Received]:
        """Stop deliveries; return the prefetched messages to hand back with the held ones.

        A prefetched message that was already redelivered keeps its story untold: the next
        consumer sorts it out as we would have (so it is not marked released).
        """
        if self._tag:
            self._link.channel.basic_cancel(self._tag)  # what arrived before cancel-ok is buffered
            self._tag = ""
        prefetched = [read_message(m) for m in self._buffer if not m.delivery_info["redelivered"]]
        return prefetched

    def _next(self) -> Delivery | None:
        """The next deliverable message of the buffer, after sorting out the others."""
        link = self._link
        while self._buffer:
            message = self._buffer.popleft()
            tag = message.delivery_info["delivery_tag"]
            received = read_message(message, self.transport.max_payload_bytes)
            if self._declarations.send_round(link, self.queue, received):  # delayed past a week
                link.channel.basic_ack(tag)
                continue
            if received.payload is None:
                error = received.error or "undecodable message"
                self._declarations._store_failed(
                    link, self.queue, received, error, received.attempts
                )
                link.channel.basic_ack(tag)
                continue
            if message.delivery_info["redelivered"] and not self._was_released(received):
                if self._was_settled(received):
                    # its worker settled it after losing the connection that held it
                    self._settled_away.discard((received.key, received.attempts))
                    link.channel.basic_ack(tag)
                    continue
                # its last consumer died: count the attempt, durably, and let it come round
                # marked: its start reads its status (it may have failed already,
                # ``asynctask_amqp.failing``)
                copy = received.copy(attempts=received.attempts + 1, extra={REDELIVERED: 1})
                link.publish(self.queue, self.queue, [copy])
                link.channel.basic_ack(tag)
                continue
            self._held[tag] = received
            if self.window is not None:
                self.window.started()
            return Delivery(
                id=received.id,
                queue=self.queue,
                payload=received.payload,
                attempt=received.attempts + 1,
                submitted_at=received.submitted_at,
                receipt=(self._generation, tag, received),
                headers=received.task_headers,
            )
        return None

    def _was_released(self, received: Received) -> bool:
        marker = release_marker(self.queue, received.key)
        return bool(self._link.channel.queue_delete(marker))

    def _was_settled(self, received: Received) -> bool:
        marker = settled_marker(self.queue, received.key, received.attempts)
        return bool(self._link.channel.queue_delete(marker))

    def _mark_released(self, received: Received) -> None:
        self._leave_marker(release_marker(self.queue, received.key), b"released")

    def _mark_settled(self, received: Received) -> None:
        marker = settled_marker(self.queue, received.key, received.attempts)
        self._leave_marker(marker, b"settled")
        if len(self._settled_away) < SETTLED_AWAY_MOST:
            self._settled_away.add((received.key, received.attempts))

    def _sweep(self) -> None:
        """Drop the redeliveries of the tasks this consumer settled after losing their
        connection, now, rather than when a consumer passes them.

        The broker put each back in its place when the connection closed: at the head of
        the ready messages, behind only others that connection held (a returned message
        keeps its position). So the head is taken (``basic.get``) while it is one of
        ours, redelivered, and its settled marker is found: acked, marker deleted, gone.
        The first that is not ours is handed back as it was (a fresh one marked released
        first, so that its redelivery is not counted as an attempt) and the sweep stops:
        it costs nothing when the head is ours, and at most one message handed back when
        it is not (another consumer took ours first, or the broker has not put it back
        yet; then its marker has it dropped by the consumer that receives it, and the
        sweep forgets it). Not while subscribed: the subscription delivers the head to
        us, and ``_next`` drops it.
        """
        channel = self._link.channel
        while self._settled_away and not self._tag:
            message = channel.basic_get(self.queue, no_ack=False)
            if message is None:
                return
            tag = message.delivery_info["delivery_tag"]
            received = read_message(message, self.transport.max_payload_bytes)
            key = (received.key, received.attempts)
            redelivered = bool(message.delivery_info["redelivered"])
            if redelivered and key in self._settled_away and self._was_settled(received):
                self._settled_away.discard(key)
                channel.basic_ack(tag)
                continue
            if not redelivered:
                self._mark_released(received)
            hand_back(channel, tag)
            # The others looked for were taken by another consumer, or are not back yet:
            # their markers have them dropped wherever they come. Forgotten, so that they
            # do not make every later sweep hand back one more task not ours (a return
            # that a quorum queue counts toward its x-delivery-limit).
            self._settled_away.clear()
            return

    def _leave_marker(self, marker: str, body: bytes) -> None:
        arguments = {"x-expires": RELEASE_MARKER_EXPIRY_MS}
        self._link.channel.queue_declare(
            marker, durable=True, auto_delete=False, arguments=arguments
        )
        self._link.publish("", marker, [amqp.Message(body, delivery_mode=2)])

    def _lost(self, exc: BaseException) -> TransportError:
        """The connection (or channel) failed: drop it; the broker takes back our tasks."""
        self._link.discard()
        self._generation = 0
        self._tag = ""
        self._declarations._forget(self.queue)  # declare again: it may have been deleted
        self._buffer.clear()
        self._held.clear()
        cause = getattr(exc, "cause", exc)
        return map_error(cause, self._declarations.params)

    # -- settling ---------------------------------------------------------------------------

    def _settle(
        self,
        delivery: Delivery,
        action: Callable[[int, Received], None],
        after_loss: Callable[[Received], None],
    ) -> None:
        """Settle on the connection that holds the task, with ``action``; if that
        connection is lost (before or during the call), with ``after_loss`` on a new one."""
        generation, tag, sent = delivery.receipt
        with self._link.lock:
            received = self._held.pop(tag, None) if generation == self._generation else None
            if received is not None and self._connected():
                try:
                    action(tag, received)
                    return
                except DRIVER_ERRORS as exc:
                    error = self._lost(exc)
                    logger.info(
                        "%r: lost the connection while settling task %s of %r (%s); "
                        "settling it on a new connection",
                        self.transport,
                        delivery.id,
                        self.queue,
                        error,
                    )
            self._settle_after_loss(delivery, received or sent, after_loss)

    def _settle_after_loss(
        self, delivery: Delivery, received: Received, after_loss: Callable[[Received], None]
    ) -> None:
        """The broker took the task back with the lost connection (it is in the queue,
        redelivered): connect again, retrying up to ``retry_timeout``, and leave what
        tells its next consumer that it was settled (see the module docstring)."""
        deadline = time.monotonic() + self.transport.retry_timeout
        pause = 0.05
        while True:
            try:
                if not self._connected():
                    self._connect()
                    self.transport.note_recovery()
                after_loss(received)
            except DRIVER_ERRORS as exc:
                error = self._lost(exc)
                if not isinstance(error, TransportUnavailable) or time.monotonic() > deadline:
                    logger.warning(
                        "%r: could not settle task %s of %r after its connection was "
                        "lost (%s); the broker delivers it again, counted as an attempt",
                        self.transport,
                        delivery.id,
                        self.queue,
                        error,
                    )
                    return
                self.transport.note_outage(error)
            else:
                self._sweep_quietly()
                return
            time.sleep(pause)
            pause = min(pause * 2, 2.0)

    def _sweep_quietly(self) -> None:
        """``_sweep``, whose failure costs only its benefit: the settle is done, and the
        markers left have the redeliveries dropped by the consumers that receive them."""
        try:
            self._sweep()
        except DRIVER_ERRORS as exc:
            error = self._lost(exc)
            logger.debug("%r: sweeping %r after a settle: %s", self.transport, self.queue, error)

    def ack(
        self,
        delivery: Delivery,
        result_json: str | None = None,
        read: bool = True,
        timed: bool = True,
    ) -> None:
        """The task is done: the broker forgets it. ``read=False``: the caller read the
        connection just before (a relay's batch of acks reads it for the first only);
        ``timed=False``: the caller counts its run time (``ack_many``)."""

        def action(tag: int, received: Received) -> None:
            # basic.ack has no reply: read first what the broker sent (a connection it
            # closed says so here), so that an ack is not written into a dead connection
            if read:
                self._link.pump()
            self._link.channel.basic_ack(tag)

        self._settle(delivery, action, self._mark_settled)
        if timed:
            self._timed(1)

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """``ack`` each of ``deliveries``; one ``basic.ack`` (``multiple``) when they are
        every task held on the connection up to the last of them (a relay's batch of a
        drain, acknowledged in order): one write, not one a task."""
        with self._link.lock:
            tags = sorted(
                delivery.receipt[1]
                for delivery in deliveries
                if delivery.receipt[0] == self._generation and delivery.receipt[1] in self._held
            )
            if len(tags) == len(deliveries) > 1 and self._connected():
                last = tags[-1]
                if sum(1 for tag in self._held if tag <= last) == len(tags):
                    try:
                        self._link.pump()  # (see ack)
                        self._link.channel.basic_ack(last, multiple=True)
                    except DRIVER_ERRORS as exc:
                        self._lost(exc)  # each is settled after the loss below
                    else:
                        for tag in tags:
                            del self._held[tag]
                        self._timed(len(tags))
                        return
        for i, delivery in enumerate(deliveries):
            self.ack(delivery, read=i == 0, timed=False)
        self._timed(len(deliveries))

    def retry(self, delivery: Delivery, delay: float, error: str) -> None:
        """Publish a copy (attempts + 1) to the retry ladder, then ack the original."""
        delay = check_delay(delay)

        def publish(received: Received) -> None:
            copy = received.copy(attempts=delivery.attempt)
            if delay > 0:
                self._declarations.to_ladder(self._link, self.queue, "retry", delay, [copy])
            else:
                self._link.publish(self.queue, self.queue, [copy])

        published: list[bool] = []

        def action(tag: int, received: Received) -> None:
            publish(received)
            published.append(True)
            self._link.channel.basic_ack(tag)

        def after_loss(received: Received) -> None:
            if not published:  # first: a marker without its copy would lose the task
                publish(received)
                published.append(True)
            self._mark_settled(received)

        self._settle(delivery, action, after_loss)
        self._timed(1)

    @property
    def fail_writes_failed(self) -> bool:
        """``fail`` writes ``failed`` before its ack (``asynctask_amqp.failing``)."""
        return in_order(self)

    def start(self, delivery: Delivery) -> StartVerdict:
        """``Consumer.start``; a copy published for a redelivery reads its status first
        (it may have failed already: ``asynctask_amqp.failing``)."""
        _, _, received = delivery.receipt
        if REDELIVERED in received.headers:
            verdict = start_redelivered(self, delivery, self.copy_to_failed)
            if verdict is not None:
                return verdict
        return super().start(delivery)

    def fail(self, delivery: Delivery, error: str) -> bool | None:
        """Publish a copy to the failed store, then ack the original; with statuses in
        the store of ``asynctask_state``, ``failed`` written in between
        (``asynctask_amqp.failing``)."""
        if in_order(self):
            return fail_in_order(self, delivery, error, self.copy_to_failed)
        self._fail_now(delivery, error)
        return None

    def copy_to_failed(self, delivery: Delivery, error: str) -> None:
        """Publish a copy of ``delivery`` to the failed store (confirmed), keeping the
        original held: its ``ack`` follows. Its connection lost, on a new one (the broker
        took the original back; the ack then leaves the settled marker), retrying up to
        ``retry_timeout``; then raises, and nothing says ``failed``: the broker delivers
        the task again (a copy the store lacks must not be acknowledged away)."""
        generation, tag, sent = delivery.receipt
        deadline = time.monotonic() + self.transport.retry_timeout
        pause = 0.05
        with self._link.lock:
            received = self._held.get(tag) if generation == self._generation else None
            while True:
                try:
                    if not self._connected():
                        self._connect()
                        self.transport.note_recovery()
                    self._declarations._store_failed(
                        self._link, self.queue, received or sent, error, delivery.attempt
                    )
                    return
                except DRIVER_ERRORS as exc:
                    lost = self._lost(exc)
                    if not isinstance(lost, TransportUnavailable) or time.monotonic() > deadline:
                        raise lost from exc
                    self.transport.note_outage(lost)
                time.sleep(pause)
                pause = min(pause * 2, 2.0)

    def _fail_now(self, delivery: Delivery, error: str) -> None:
        """Publish a copy to the failed store, then ack the original."""

        def store(received: Received) -> None:
            self._declarations._store_failed(
                self._link, self.queue, received, error, delivery.attempt
            )

        stored: list[bool] = []

        def action(tag: int, received: Received) -> None:
            store(received)
            stored.append(True)
            self._link.channel.basic_ack(tag)

        def after_loss(received: Received) -> None:
            if not stored:  # first: a marker without its copy would lose the task
                store(received)
                stored.append(True)
            self._mark_settled(received)

        self._settle(delivery, action, after_loss)
        self._timed(1)

    def release(self, delivery: Delivery, behind: Sequence[Delivery] = ()) -> None:
        """Back to the head of the queue, untouched (marked released, then requeued).

        Deliveries pause until the next ``reserve``, so that the task waits in the queue
        (for any consumer) rather than coming straight back to this one; what was
        prefetched behind it goes back too, keeping the queue's order, and so do
        ``behind``: tasks reserved and not started (a relay's worker holds them ahead).
        """

        def give_back(tag: int | None, received: Received | None) -> None:
            channel = self._link.channel
            prefetched = self._unsubscribe()
            reserved = self._unstarted(behind)
            first = [] if received is None else [received]
            self._hand_back_unstarted(channel, prefetched, reserved, first)
            if tag is not None:
                hand_back(channel, tag)
            # a round trip, so that the task is back in the queue when release returns
            channel.basic_qos(0, self.prefetch, False)
            self._qos = self.prefetch

        def after_loss(received: Received) -> None:
            self._mark_released(received)
            # those behind it that came on the new connection (a relay reads ahead)
            give_back(None, None)

        self._settle(delivery, give_back, after_loss)
        if self.window is not None and not self._held:
            self.window.idle()  # no task ran: the wait until the next is not a run time

    def close(self) -> None:
        """Hand back what is held and prefetched (marked released), and disconnect."""
        if self.closed:
            return
        self._disconnect(lambda: [*self._held.values(), *self._unsubscribe()])

    def abandon(self, unstarted: Sequence[Delivery] = ()) -> None:
        """The worker died: hand back what it never started (prefetched, and
        ``unstarted``: reserved, handed to it ahead, not taken; marked released: no
        attempt), then drop the connection. The broker gives the tasks the worker held to
        other consumers at once, and their redelivery counts an attempt."""
        if self.closed:
            return

        def unseen() -> list[Received]:
            # a round trip: the deliveries the broker sent before its answer are in the
            # buffer after it. No basic.cancel: until the connection closes, the broker
            # must go on counting the held tasks as delivered to a consumer.
            self._link.channel.basic_qos(0, self.prefetch, False)
            fresh = [m for m in self._buffer if not m.delivery_info["redelivered"]]
            reserved = [received for _, received in self._unstarted(unstarted)]
            return [*reserved, *(read_message(m) for m in fresh)]

        self._disconnect(unseen)

    def _unstarted(self, deliveries: Sequence[Delivery]) -> list[tuple[int, Received]]:
        """(tag, message) of those of ``deliveries`` held on the current connection,
        taken out of the held ones (the others went back with a lost connection)."""
        found = []
        for delivery in deliveries:
            generation, tag, _ = delivery.receipt
            received = self._held.pop(tag, None) if generation == self._generation else None
            if received is not None:
                found.append((tag, received))
        return found

    def _disconnect(self, handed_back: Callable[[], list[Received]]) -> None:
        """Mark ``handed_back()`` released, then drop the connection: the closed channel
        returns what is held and prefetched, in order. (Not by ``hand_back``: RabbitMQ
        3.10 does not count a closed channel's returns toward a quorum queue's delivery
        limit, and does count a ``basic.nack``'s.)"""
        self.closed = True
        self.close_status_feed()
        self._declarations._heartbeats.discard(self._link)
        with self._link.lock:
            if self._connected():
                try:
                    for received in handed_back():
                        self._mark_released(received)
                except DRIVER_ERRORS as exc:
                    logger.debug("%r: closing consumer of %r: %s", self.transport, self.queue, exc)
            self._buffer.clear()
            self._held.clear()
            self._generation = 0
            # closing the channel requeues every unacked message, in order
            self._link.close()

    def _check_open(self) -> None:
        if self.closed:
            raise TransportClosed(f"this consumer of {self.queue!r} is closed")
        self.transport._check_open()
