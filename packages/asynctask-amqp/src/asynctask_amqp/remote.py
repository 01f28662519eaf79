"""``RemoteConsumer``: the worker's side of a relay (see ``asynctask_amqp.relay``).

The same ``Consumer`` as ``AmqpConsumer``, but its connection lives in a relay process
that it starts and talks to over a socketpair, so a task that holds the GIL in this
process cannot stop the connection's heartbeats. A ``reserve`` takes the tasks the relay
handed over ahead, one by one, checking each one's connection generation against the
word the relay shares (a task whose connection was lost is skipped), and asks the relay
only when it holds none. ``ack`` is sent with the next request, or alone before the next
task handed over ahead is taken (no answer waited for); the other calls wait for the
relay's answer. With statuses in a store whose feed allows it, the relay makes the
status writes too, before the acks they come with (``asynctask_amqp.relayedfeed``).
See ``asynctask_amqp.relay`` for the conversation.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from asynctask.errors import TransportClosed, TransportError, TransportUnavailable
from asynctask.status import StartVerdict, StateStore, StatusFeed
from asynctask.transport import Consumer, Delivery, Transport, check_delay
from asynctask.window import AdaptivePrefetch
from asynctask_amqp.failing import fail_in_order, in_order, start_redelivered
from asynctask_amqp.relayedfeed import Relayable, RelayedFeed, Write
from asynctask_amqp.wire import PeerGone, Reader, SharedWords, send, send_settled

logger = logging.getLogger("asynctask.amqp")

#: seconds, beyond a call's own timeout, that the relay may take to answer (a reconnect,
#: a publisher confirm) before it counts as hung
ANSWER_SLACK = 60.0

#: relays started by this process and not reaped yet: a relay whose consumer was dropped
#: without ``close`` exits when its socket closes, and is reaped here later (a ``Popen``
#: collected while its process runs would warn)
_relays: set[subprocess.Popen[bytes]] = set()
_relays_lock = threading.Lock()


def start_relay() -> tuple[socket.socket, SharedWords, subprocess.Popen[bytes]]:
    """Start ``python -P -m asynctask_amqp.relay`` on one end of a new socketpair, with
    the words it shares with this process."""
    ours, theirs = socket.socketpair()
    words_fd = SharedWords.new_file()
    try:
        words = SharedWords(words_fd)
        process = subprocess.Popen(
            [
                *(sys.executable, "-P", "-m", "asynctask_amqp.relay"),
                *(str(theirs.fileno()), str(words_fd)),
            ],
            pass_fds=(theirs.fileno(), words_fd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
    except OSError as exc:
        ours.close()
        raise TransportError(
            f"could not start the AMQP relay process ({sys.executable} -P -m "
            f"asynctask_amqp.relay): {exc}; check the process and file limits (ulimit), "
            "or set relay=false in the transport URI"
        ) from exc
    finally:
        theirs.close()
        os.close(words_fd)  # the mappings stay
    with _relays_lock:
        for done in [p for p in _relays if p.poll() is not None]:
            _relays.discard(done)
        _relays.add(process)
    return ours, words, process


class RemoteConsumer(Consumer):
    """A consumer whose AMQP connection lives in a relay process; see the module docstring."""

    def __init__(self, transport: Transport, queue: str, prefetch: int) -> None:
        super().__init__(transport, queue, prefetch)
        # (reentrant: ``reserve`` calls ``flush_status_feed`` holding it, and a
        # ``RelayedFeed`` takes it)
        self._lock = threading.RLock()
        self._sock, self._words, self._process = start_relay()
        self._reader = Reader(self._sock, trusted=True)  # (its relay's answers: marshal)
        self._broken = ""  # why the relay cannot be used any more
        #: (connection generation, delivery) handed over ahead, not taken yet, in order
        self._ahead: deque[tuple[int, Delivery]] = deque()
        #: receipts acknowledged, and skipped (their connection lost before they were
        #: taken), sent with the next request
        self._acks: list[int] = []
        self._skips: list[int] = []
        #: status writes the relay makes before the acks sent with them (``RelayedFeed``)
        self._writes: list[Write] = []
        #: receipts of copies published for a redelivery, not started yet: their start
        #: reads their status first (``asynctask_amqp.failing``)
        self._redelivered: set[int] = set()
        spec = {
            "uri": transport.uri,
            "queue": queue,
            "prefetch": prefetch,
            # the transport's default: the relay's consumer sizes its window itself
            "adaptive": isinstance(prefetch, AdaptivePrefetch),
            # the relay decodes: it must refuse what this process would refuse
            "max_payload_bytes": transport.max_payload_bytes,
            "worker": os.getpid(),
            "log_level": logging.getLogger().getEffectiveLevel(),
        }
        try:
            send(self._sock, spec)
        except OSError as exc:
            self._fail(f"could not reach it: {exc}")

    @property
    def relay_pid(self) -> int:
        """The relay process's pid (for tests and operators)."""
        return self._process.pid

    # -- the calls that wait for an answer --------------------------------------------------

    def reserve(self, timeout: float) -> Delivery | None:
        """Take the next task handed over ahead whose connection still holds it; when
        none is left, wait up to ``timeout`` s for the relay to hand over more (it
        reconnects while the broker is away)."""
        self._check_open()
        deadline = time.monotonic() + max(0.0, timeout)
        # With a status feed, ask first for what the relay has ready, without waiting:
        # while tasks keep coming the statuses it holds go with the next ones (a drain's
        # writes together); only a reserve that would wait sends them first.
        peek = self.has_status_feed
        while True:
            words = self._words
            while self._ahead:
                generation, delivery = self._ahead.popleft()
                if generation == words.generation:
                    if self._acks:
                        # before the next task runs: a worker that dies in it must not
                        # have the tasks it finished run again (and counted)
                        with self._lock:
                            self._settled()
                    words.taken = delivery.receipt
                    return delivery
                # its connection was lost before it was taken: the broker has it back
                self._skips.append(int(delivery.receipt))
                self._redelivered.discard(int(delivery.receipt))
            left = max(0.0, deadline - time.monotonic())
            if peek:
                answer = self._ask({"op": "reserve", "timeout": 0.0}, 0.0)
            else:
                # (the statuses a feed holds go while the relay answers)
                answer = self._ask({"op": "reserve", "timeout": left}, left, self.flush_status_feed)
            error = answer.get("error")
            if error is not None:
                kind = {"unavailable": TransportUnavailable, "closed": TransportClosed}
                raise kind.get(error.get("kind"), TransportError)(str(error.get("message")))
            found = answer.get("deliveries") or []
            if not found:
                if peek:
                    peek = False
                    continue
                return None
            self._ahead.extend((int(f["generation"]), self._delivery(f)) for f in found)

    def _delivery(self, found: dict[str, Any]) -> Delivery:
        if found.get("redelivered"):
            self._redelivered.add(int(found["n"]))
        return Delivery(
            id=found["id"],
            queue=self.queue,
            payload=found["payload"],
            attempt=int(found["attempt"]),
            submitted_at=found["submitted_at"],
            receipt=int(found["n"]),
            headers=dict(found.get("headers") or {}),
        )

    def close(self) -> None:
        """Hand back what is held and prefetched (not counted), and end the relay."""
        if self.closed:
            return
        self.closed = True
        self.close_status_feed()
        with self._lock:
            self._ahead.clear()  # the relay hands them back: it holds them
            if not self._broken:
                try:
                    self._sock.settimeout(ANSWER_SLACK)
                    self._send({"op": "close"})
                    self._reader.receive()
                except (OSError, PeerGone) as exc:
                    logger.debug("%r: closing the relay of %r: %s", self.transport, self.queue, exc)
            self._sock.close()
        try:
            self._process.wait(ANSWER_SLACK)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        with _relays_lock:
            _relays.discard(self._process)
        self._words.close()

    def _ask(
        self,
        request: dict[str, Any],
        timeout: float,
        meanwhile: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Send ``request`` and wait for the answer (``meanwhile`` called in between)."""
        with self._lock:
            if self._broken:
                raise TransportUnavailable(self._broken)
            try:
                self._sock.settimeout(timeout + ANSWER_SLACK)
                self._send(request)
                if meanwhile is not None:
                    meanwhile()
                answer = self._reader.receive()
            except (OSError, PeerGone) as exc:
                self._fail(f"{type(exc).__name__}: {exc}")
                raise TransportUnavailable(self._broken) from exc
            if answer is None:
                self._fail("it exited")
                raise TransportUnavailable(self._broken)
            return answer

    def _fail(self, why: str) -> None:
        """The relay is unusable: end it (the broker then gives its tasks to others,
        those handed over ahead too, which are not run here)."""
        self._ahead.clear()
        self._process.kill()
        code = self._process.wait()
        self._broken = (
            f"the AMQP relay process of this consumer of {self.queue!r} (pid "
            f"{self._process.pid}) failed ({why}; exit code {code}); its tasks go back to "
            "the queue; a new consumer starts a new relay (see its error output above)"
        )

    # -- statuses --------------------------------------------------------------------------

    def _feed_of(self, store: StateStore) -> StatusFeed | None:
        """The store's feed, its writes made by the relay when the feed allows it
        (``StatusFeed.relayable``: ``asynctask_amqp.relayedfeed``)."""
        known = self._status_feed
        if known is not None and known[0] is store:
            return known[1]
        feed = super()._feed_of(store)
        if feed is None or not feed.relayable or not self._relay_writes(store):
            return feed
        relayed = RelayedFeed(cast(Relayable, feed), self)
        self._status_feed = (store, relayed)
        return relayed

    def _relay_writes(self, store: StateStore) -> bool:
        """Have the relay open a feed of ``store`` (the transport's ``asynctask_state``)
        for this queue: whether it could (else the writes are made here)."""
        request = {"op": "state", "uri": self.transport.state_uri, "ttl": store.status_ttl}
        try:
            answer = self._ask(request, 0.0)
        except TransportError as exc:
            logger.info("%r: the relay cannot write the statuses (%s)", self.transport, exc)
            return False
        error = answer.get("error")
        if error is not None:
            logger.warning(
                "%r: the relay of %r could not open %s (%s); the worker writes the task "
                "statuses itself",
                self.transport,
                self.queue,
                self.transport.state_uri,
                error.get("message"),
            )
            return False
        return True

    # -- settling --------------------------------------------------------------------------

    def _send(self, request: dict[str, Any]) -> None:
        """Write a request (the lock held), carrying the status writes, acks and skips
        not sent yet (the relay makes the writes first, answered, then the acks)."""
        if self._writes:
            request["writes"], self._writes = self._writes, []
        if self._acks:
            request["acks"], self._acks = self._acks, []
        if self._skips:
            request["skips"], self._skips = self._skips, []
        send(self._sock, request)

    def _settle(self, op: str, delivery: Delivery, **fields: Any) -> None:
        """Send a settle call and wait until it is done."""
        try:
            self._ask({"op": op, "n": delivery.receipt, **fields}, 0.0)
        except TransportUnavailable as exc:
            logger.warning(
                "%r: could not %s task %s of %r (%s); the broker will deliver it again",
                self.transport,
                op,
                delivery.id,
                self.queue,
                exc,
            )

    def ack(self, delivery: Delivery, result_json: str | None = None) -> None:
        """The task is done: the broker forgets it. Sent with the consumer's next call
        (as ``Consumer.ack`` allows), which the run loop makes at once: with the next
        request, or alone (unanswered) before ``reserve`` returns a task handed over
        ahead; never waits for an answer."""
        with self._lock:
            self._acks.append(int(delivery.receipt))

    def _settled(self) -> None:
        """Send the writes, acks and skips waiting, unanswered (the lock held)."""
        if self._broken:
            return
        try:
            if self._writes:  # (the frame carries them before the acks)
                self._send({"op": "settled"})
            else:
                (acks, self._acks), (skips, self._skips) = (self._acks, []), (self._skips, [])
                send_settled(self._sock, acks, skips)
        except OSError as exc:
            self._fail(f"{type(exc).__name__}: {exc}")
            raise TransportUnavailable(self._broken) from exc

    def retry(self, delivery: Delivery, delay: float, error: str) -> None:
        """Back to the queue after ``delay`` s, as the next attempt (a bad ``delay`` is an
        ``InvalidTaskError`` here, before anything is sent)."""
        self._settle("retry", delivery, delay=check_delay(delay), error=error)

    @property
    def fail_writes_failed(self) -> bool:
        """``fail`` writes ``failed`` before its ack (``asynctask_amqp.failing``)."""
        return in_order(self)

    def start(self, delivery: Delivery) -> StartVerdict:
        """``Consumer.start``; a copy published for a redelivery reads its status first
        (it may have failed already: ``asynctask_amqp.failing``)."""
        if self._redelivered and int(delivery.receipt) in self._redelivered:
            self._redelivered.discard(int(delivery.receipt))
            verdict = start_redelivered(self, delivery, self._copy_to_failed)
            if verdict is not None:
                return verdict
        return super().start(delivery)

    def fail(self, delivery: Delivery, error: str) -> bool | None:
        """To the failed store, with ``error``; with statuses in the store of
        ``asynctask_state``, ``failed`` written before the ack (``asynctask_amqp
        .failing``)."""
        if in_order(self):
            return fail_in_order(self, delivery, error, self._copy_to_failed)
        self._settle("fail", delivery, error=error)
        return None

    def _copy_to_failed(self, delivery: Delivery, error: str) -> None:
        """The relay publishes a copy to the failed store and keeps the task held, for
        its ack. Raises when it could not: nothing may say ``failed`` then."""
        answer = self._ask({"op": "copy_failed", "n": delivery.receipt, "error": error}, 0.0)
        problem = answer.get("error")
        if problem is not None:
            kind = {"unavailable": TransportUnavailable, "closed": TransportClosed}
            raise kind.get(problem.get("kind"), TransportError)(str(problem.get("message")))

    def release(self, delivery: Delivery) -> None:
        """Back to the head of the queue, untouched (not counted), with the tasks handed
        over behind it (the relay holds them), keeping the queue's order."""
        with self._lock:
            behind = [int(d.receipt) for _, d in self._ahead]
            self._ahead.clear()
        self._settle("release", delivery, behind=behind)

    def _check_open(self) -> None:
        if self.closed:
            raise TransportClosed(f"this consumer of {self.queue!r} is closed")
        if self.transport.closed:
            raise TransportClosed(f"{self.transport!r} is closed; get a new one")
