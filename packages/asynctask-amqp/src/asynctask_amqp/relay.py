"""The relay: a worker's AMQP connection, kept in a small process of its own.

Why. RabbitMQ gives a connection's unacknowledged tasks to other consumers as soon as the
connection closes, and closes a connection that misses two heartbeats. A task that holds
the GIL (a catastrophic regex, a C call that does not release it) stops every thread of
its process, the heartbeat thread too; so the connection must live in another process.
``RemoteConsumer`` (``asynctask_amqp.remote``) starts one relay per consumer, as
``python -P -m asynctask_amqp.relay <socket fd> <words fd>``: a fresh interpreter that
holds the connection, consumes with the prefetch, answers heartbeats (the transport's
heartbeat thread, which nothing here ever blocks), and serves the consumer's calls over
a socketpair (frames of ``asynctask_amqp.wire``: JSON from the worker, ``marshal`` data
back, which a worker that has just woken decodes in a third of JSON's time).

The conversation, worker first::

    {"uri", "queue", "prefetch", "max_payload_bytes", "worker": pid, "log_level"}   once
    {"op": "reserve", "timeout": s}   -> {"deliveries": [{"n", "generation", "id",
                                           "payload", "attempt", "submitted_at",
                                           "headers"}, ...]} or {"error": {...}}
    {"op": "settled"}                 -> nothing (it carries acks and skips, see below)
    {"op": "release", "n", "behind": [n, ...]}, {"op": "retry", "n", "delay", "error"},
    {"op": "fail", "n", "error"}      -> {"done": true} once settled (read-your-writes)
    {"op": "state", "uri", "ttl"}     -> {"done": true} or {"error": {...}}
    {"op": "copy_failed", "n", "error"} -> {"done": true} once the failed store holds a
                                           copy; the task stays held, for its ack
                                           (``asynctask_amqp.failing``), or {"error"}
    {"op": "close"}                   -> {"closed": true}, then the relay exits

Hand-over ahead. While the worker runs its tasks the relay waits on both sockets, and
reads and decodes what the broker delivers (``ready``); a ``reserve`` hands over every
task ready and received (up to the prefetch), waiting for the first only when there is
none: the worker keeps them and takes them one by one without asking, so a drain costs
a round trip per batch, not per task, and the decoding is done beside the worker's work.
Each carries the *generation* of the connection that delivered it. The relay writes
the generation of its connection into a word of memory it shares with the worker
(``wire.SharedWords``) when the connection opens, and 0 as soon as it finds it lost (a
failed call, or the heartbeat thread's read), both under the connection's lock. The
worker takes a task (``reserve`` returns it) only if its generation is that word, and
then writes the task's number into the other shared word, ``taken``: no system call a
task. A task whose connection was lost before it was taken is skipped (the broker has
given it back, and delivers it again; the worker names it in ``"skips"``); one lost after
it was taken is in flight, and a connection kill may run it twice, as it may any task
running when its connection is lost (the package README says so).

Every request may carry ``"acks": [n, ...]`` and ``"skips": [n, ...]``, done first: the
worker sends its acks with its next request, or alone (``settled``, no answer) before it
takes the next task handed over ahead, so that a worker dying in that task does not
have the ones it finished run again; frames of acks read together are settled together,
and a batch of acks that is every task held up to its last is one ``basic.ack``
(``multiple``). A worker that dies between an ``ack`` and the next frame
has that finished task run again, as if it had died a moment earlier.

Statuses. With ``asynctask_state`` naming a store whose feed allows it (``state``: the
relay opens a feed of that store for the queue), a request may also carry
``"writes"``: the worker's status writes (a start, an outcome), made first, in order,
and their replies waited for, then the acks (``asynctask_amqp.relayedfeed``): an
acknowledged task's outcome is in the store, and the worker waits for neither. Writes
and the acks after them are gathered (``Relay._gather``: up to ``GATHER_SECONDS``, or a
``GATHER_SHARE`` of the prefetch's tasks), then made together: one store call and one
``basic.ack`` for the tasks of a busy worker's frames, not one of each a frame; any
other request makes them first, but a ``reserve`` is answered first (its tasks run
while the store answers), and a worker that goes away has them made. A ``release``
hands back with its task the ones the worker holds behind it (``behind``), keeping the
queue's order.

A worker that dies closes its end of the socket (the kernel does it, however it died);
the relay notices at once, even in the middle of a ``reserve`` (it waits in slices),
hands back what the worker never took (prefetched, or handed over past ``taken``: no
attempt), closes the connection so the broker gives the worker's tasks to others at once
(each counts an attempt), and exits. It also exits if its parent process is gone (the
socket may have leaked into a grandchild), checked with each slice. It ignores SIGTERM
and SIGINT: a process-group stop lets the worker finish its task, and the worker's
``close`` ends the relay. ``PR_SET_PDEATHSIG`` is not used: it fires when the *thread*
that started the relay ends, and a worker may create its consumer in a thread that ends
before the consumer does.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import sys
import time
from typing import Any

from asynctask.errors import AsynctaskError, TransportClosed, TransportUnavailable
from asynctask.logs import setup_logging
from asynctask.plugins import load_plugins
from asynctask.transport import Delivery, Transport
from asynctask.window import AdaptivePrefetch
from asynctask_amqp.consumer import AmqpConsumer
from asynctask_amqp.failing import REDELIVERED
from asynctask_amqp.relayedfeed import replay
from asynctask_amqp.transport import AmqpTransport
from asynctask_amqp.wire import PeerGone, Reader, SharedWords, send_data

logger = logging.getLogger("asynctask.amqp.relay")

#: seconds between checks that the worker is still there while the relay waits
SLICE = 0.25
#: a busy worker's status writes and the acks after them are gathered for up to this
#: many seconds (``Relay._gather``)...
GATHER_SECONDS = 0.002
#: ... or this part of the prefetch's tasks, whichever comes first
GATHER_SHARE = 4


class WorkerGone(Exception):
    """The worker closed its end of the socket, or its process is gone."""


class Relay:
    """Serves one consumer to one worker process; see the module docstring."""

    def __init__(
        self, reader: Reader, consumer: AmqpConsumer, worker: int, words: SharedWords
    ) -> None:
        self.sock = reader.sock
        self.reader = reader
        self.consumer = consumer
        self.worker = worker
        self.words = words
        #: what the worker holds (handed over, not settled nor skipped), by number
        self.handed: dict[int, Delivery] = {}
        #: taken from the consumer while the worker ran its tasks, for its next reserve
        self.ready: list[Delivery] = []
        self._next = 1
        #: the worker's status writes go here (``op: state``): (its store's transport,
        #: the store's feed of the queue)
        self._state: tuple[Transport, Any] | None = None
        #: status writes and the acks after them, gathered, not made yet (``_gather``),
        #: and the ``time.monotonic()`` the first was
        self._writes: list[list[Any]] = []
        self._acks: list[int] = []
        self._gathered_at = 0.0

    def serve(self) -> None:
        """Answer the worker until it closes the consumer or goes away."""
        try:
            while True:
                self._wait_for_worker()
                request = self.reader.receive()
                if request is None:
                    raise WorkerGone("the worker closed the socket")
                while request.get("op") == "settled" and self.reader.ready():
                    # acks sent one a task, read together: settled together
                    following = self.reader.receive()
                    assert following is not None  # (a whole frame is buffered)
                    for key in ("writes", "acks", "skips"):
                        following[key] = [*request.get(key, ()), *following.get(key, ())]
                    request = following
                for n in request.get("skips", ()):
                    self.handed.pop(int(n), None)  # back in the queue with its connection
                op = request.get("op")
                self._gather(request)
                if op == "settled":
                    continue
                if op == "reserve":
                    # what is ready handed over first (``_reserve`` makes them before it
                    # waits: the acks let the broker send more), the gathered writes
                    # made while the worker runs it
                    send_data(self.sock, self._handle(request) or {})
                    self._commit()
                    continue
                self._commit()
                if op == "close":
                    self.consumer.close()
                    send_data(self.sock, {"closed": True})
                    return
                answer = self._handle(request)
                if answer is not None:
                    send_data(self.sock, answer)
        except (WorkerGone, PeerGone, OSError) as exc:
            logger.debug("relay of %r: worker %d gone (%s)", self.consumer.queue, self.worker, exc)
            self._commit()  # what its last frames said it did
            taken = self.words.taken  # the worker is gone: it writes no more
            unseen = [d for n, d in self.handed.items() if n > taken]
            self.consumer.abandon([*unseen, *self.ready])

    def _wait_for_worker(self) -> None:
        """Block until the worker writes (or closes); check it lives meanwhile, and take
        in what the broker delivers meanwhile (read and decoded here while the worker
        runs its tasks, ready for its next ``reserve``)."""
        while not self.reader.ready():
            timeout = SLICE
            if self._acks or self._writes:
                timeout = self._gathered_at + GATHER_SECONDS - time.monotonic()
                if timeout <= 0:
                    self._commit()
                    timeout = SLICE
            broker = None
            if len(self.ready) < self.consumer.prefetch:
                broker = self.consumer.delivering_socket()
            waiting = [self.sock] if broker is None else [self.sock, broker]
            # frames read ahead (``link.buffered_reads``) are not seen by select
            ahead = broker is not None and self.consumer.has_frame()
            readable = select.select(waiting, [], [], 0 if ahead else timeout)[0]
            if self.sock in readable:
                return
            if readable or ahead:
                self._pull()
            elif timeout == SLICE:
                self._check_parent()

    def _pull(self) -> None:
        """Take what the consumer has received, up to the prefetch, without waiting."""
        try:
            self.ready += self.consumer.take(self.consumer.prefetch - len(self.ready))
        except AsynctaskError:  # the worker's next reserve meets it again
            return

    def _check_parent(self) -> None:
        if os.getppid() != self.worker:
            raise WorkerGone(f"the worker process {self.worker} is gone")

    def _check_socket(self) -> None:
        """Between reserve slices: the worker only writes after our answer, so anything
        readable now is the end of its socket."""
        self._check_parent()
        readable = select.select([self.sock], [], [], 0)[0]
        if readable and not self.sock.recv(1, socket.MSG_PEEK):
            raise WorkerGone("the worker closed the socket")

    def _handle(self, request: dict[str, Any]) -> dict[str, Any] | None:
        op = request.get("op")
        if op == "reserve":
            try:
                return {"deliveries": self._reserve(float(request["timeout"]))}
            except AsynctaskError as exc:
                return {"error": {"kind": error_kind(exc), "message": str(exc)}}
        if op == "settled":
            return None
        if op == "state":
            return self._open_state(str(request["uri"]), float(request["ttl"]))
        if op == "copy_failed":
            return self._copy_failed(int(request["n"]), str(request["error"]))
        delivery = self.handed.pop(int(request["n"]), None)
        try:
            if delivery is None:
                logger.warning(
                    "relay of %r: %s of a task that is not held (settled twice?); ignored",
                    self.consumer.queue,
                    op,
                )
            elif op == "retry":
                self.consumer.retry(delivery, float(request["delay"]), str(request["error"]))
            elif op == "fail":
                self.consumer.fail(delivery, str(request["error"]))
            elif op == "release":
                behind = [self.handed.pop(int(n), None) for n in request.get("behind", ())]
                behind, self.ready = [*behind, *self.ready], []
                self.consumer.release(delivery, [d for d in behind if d is not None])
            else:
                raise PeerGone(f"unknown request {op!r}")
        except AsynctaskError as exc:  # the consumer logged what the broker will do
            logger.warning("relay of %r: %s failed: %s", self.consumer.queue, op, exc)
        return {"done": True}

    def _open_state(self, uri: str, ttl: float) -> dict[str, Any]:
        """Open a feed of the store ``uri`` (the worker's ``asynctask_state``) for the
        worker's status writes, in place of one opened before."""
        self.close_state()
        try:
            # the store is another transport, made here as the worker made it (its
            # plugin's class, not get_transport: the worker's settings are not read here)
            other = load_plugins().transport_class(uri)(uri)
            store = other._state_store()
            feed = None
            if store is not None:
                store.status_ttl = ttl
                feed = store.feed(self.consumer.queue)
            if feed is None or not feed.relayable:
                other.close()
                return {"error": {"kind": "error", "message": f"{uri} gives no relayable feed"}}
        except Exception as exc:  # (any: the worker writes its statuses itself then)
            return {"error": {"kind": "error", "message": f"{type(exc).__name__}: {exc}"}}
        self._state = (other, feed)
        return {"done": True}

    def _gather(self, request: dict[str, Any]) -> None:
        """Keep the request's status writes and acks for ``_commit``, after those kept.

        Why. A busy worker sends a frame a task (its ack, before it takes the next
        task: ``RemoteConsumer.reserve``), and each write the relay makes is a script
        call Redis runs and a round trip the relay waits for, each ack a
        ``basic.ack``: made a frame at a time, a tracked drain cost one of each a task.
        So with writes among them they wait, up to ``GATHER_SECONDS`` or a
        ``GATHER_SHARE`` of the prefetch's tasks, and go together: one script call,
        one ``basic.ack`` (``multiple``). Any other request makes them first
        (a reserve that finds tasks ready answers first, then makes them). Acks with
        no writes waiting go at once, as without statuses."""
        writes, acks = request.get("writes"), request.get("acks")
        if writes:
            if not self._writes and not self._acks:
                self._gathered_at = time.monotonic()
            self._writes += writes
        if acks:
            self._acks += acks
            if not self._writes or len(self._acks) * GATHER_SHARE >= self.consumer.prefetch:
                self._commit()

    def _commit(self) -> None:
        """Make the writes gathered, answered, then the acks gathered (``_gather``)."""
        writes, acks = self._writes, self._acks
        if writes:
            self._writes = []
            self._write(writes)
        if acks:
            self._acks = []
            self._ack(acks)

    def _write(self, writes: list[list[Any]]) -> None:
        """Make the worker's status writes, in order, and wait for their replies: the
        acks that came with them go after (``asynctask_amqp.relayedfeed``). A store that
        cannot be reached keeps them in the feed, made first by its next call or close
        (as the worker's own feed does); the acks go on."""
        if self._state is None:
            logger.warning(
                "relay of %r: status writes with no store opened; dropped", self.consumer.queue
            )
            return
        feed = self._state[1]
        try:
            replay(feed, writes)
            feed.flush(waiting=False)  # (every reply read)
        except AsynctaskError as exc:
            logger.warning(
                "relay of %r: the task statuses could not be written yet (%s); they are "
                "sent again with the next ones",
                self.consumer.queue,
                exc,
            )

    def close_state(self) -> None:
        """Close the status feed (every reply read) and its store's transport."""
        state, self._state = self._state, None
        if state is not None:
            try:
                state[1].close()
            except AsynctaskError as exc:
                logger.warning(
                    "relay of %r: the task statuses sent last may be lost (%s)",
                    self.consumer.queue,
                    exc,
                )
            finally:
                state[0].close()

    def _copy_failed(self, n: int, error: str) -> dict[str, Any]:
        """Publish a copy of a task the worker holds to the failed store, keeping it
        held: the worker writes ``failed``, then acks it (``asynctask_amqp.failing``).
        An error is answered: the worker must not write ``failed`` without the copy."""
        delivery = self.handed.get(n)
        if delivery is None:
            message = f"task {n} is not held by the relay of {self.consumer.queue!r}"
            return {"error": {"kind": "error", "message": message}}
        try:
            self.consumer.copy_to_failed(delivery, error)
        except AsynctaskError as exc:
            return {"error": {"kind": error_kind(exc), "message": str(exc)}}
        return {"done": True}

    def _ack(self, numbers: list[int]) -> None:
        acked = [self.handed.pop(int(n), None) for n in numbers]
        if None in acked:
            logger.warning(
                "relay of %r: ack of a task that is not held (settled twice?); ignored",
                self.consumer.queue,
            )
        try:
            self.consumer.ack_many([d for d in acked if d is not None])
        except AsynctaskError as exc:  # the consumer logged what the broker will do
            logger.warning("relay of %r: ack failed: %s", self.consumer.queue, exc)

    def _reserve(self, timeout: float) -> list[dict[str, Any]]:
        """Hand over what is ready (taken in while the worker was busy) and whatever
        else has arrived, up to the prefetch; with nothing, wait for a delivery first,
        checking between slices that the worker lives."""
        generation = self.words.generation  # others came on a connection since lost
        self.ready = [d for d in self.ready if d.receipt[0] == generation]
        if self.consumer.adapt(self.ready):  # a smaller window: what is ready went back
            self.ready = []
        if not self.ready:
            self._commit()  # (the broker sends no more while the window is full)
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                delivery = self.consumer.reserve(min(max(left, 0.0), SLICE))
                if delivery is not None:
                    break
                if left <= SLICE:
                    return []
                self._check_socket()
            self.ready.append(delivery)
        self._pull()
        most = len(self.ready)
        window = self.consumer.window
        if window is not None and window.run_time is None:
            most = 1  # no run time known yet: hand over one, not a window of long tasks
        batch, self.ready = self.ready[:most], self.ready[most:]
        return [self._hand(d) for d in batch]

    def _hand(self, delivery: Delivery) -> dict[str, Any]:
        n, self._next = self._next, self._next + 1
        self.handed[n] = delivery
        return {
            "n": n,
            "generation": delivery.receipt[0],
            "id": delivery.id,
            "payload": delivery.payload,
            "attempt": delivery.attempt,
            "submitted_at": delivery.submitted_at,
            "headers": delivery.headers,
            # its start reads its status first (``asynctask_amqp.failing``)
            "redelivered": REDELIVERED in delivery.receipt[2].headers,
        }


def error_kind(exc: AsynctaskError) -> str:
    """How an error crosses the socket: ``RemoteConsumer`` raises the same kind again."""
    if isinstance(exc, TransportUnavailable):
        return "unavailable"
    if isinstance(exc, TransportClosed):
        return "closed"
    return "error"


def main() -> int:
    """Run a relay on the socket and the shared words whose descriptors are the arguments."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(sys.argv[1]))
    words = SharedWords(int(sys.argv[2]))
    os.close(int(sys.argv[2]))  # the mapping stays
    reader = Reader(sock)
    spec = reader.receive()
    if spec is None:
        return 0  # the worker went away before it said anything
    setup_logging(level=int(spec.get("log_level", logging.INFO)))
    worker = int(spec["worker"])
    if os.getppid() != worker:
        return 0
    transport = AmqpTransport(str(spec["uri"]))
    if "max_payload_bytes" in spec:
        transport.max_payload_bytes = int(spec["max_payload_bytes"])
    consumer = AmqpConsumer(
        transport,
        transport,
        str(spec["queue"]),
        AdaptivePrefetch(spec["prefetch"]) if spec.get("adaptive") else int(spec["prefetch"]),
        worker,
        on_generation=words.set_generation,
    )
    relay = Relay(reader, consumer, worker, words)
    try:
        relay.serve()
    finally:
        words.generation = 0  # whatever ends the relay ends its connection
        relay.close_state()
        transport.close()
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
