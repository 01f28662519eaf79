"""The Redis store's ``StatusFeed`` (``asynctask_redis.statusfeed``), driven directly as a
consumer of another transport drives it (``Consumer.start``, ``record_outcome``): the
cancels it must know, and the writes it sends without waiting. The stories through a
real AMQP consumer are in tests/amqp/test_status.py."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from asynctask.status import SubmitOptions
from asynctask.testing import unique_queue
from asynctask.transport import new_task_id
from asynctask_redis import statusfeed


def test_a_feed_knows_the_cancels_made_before_it_opened(transport):
    """(Fails with a feed that only hears what is published after it subscribed.)"""
    store, queue = transport.state(), unique_queue()
    kept, doomed = store.submitted(queue, [new_task_id(), new_task_id()], 0, SubmitOptions())
    assert store.cancel(doomed) is True
    feed = store.feed(queue)
    try:
        assert feed.may_start(kept) is True
        assert feed.may_start(doomed) is False
        # and one cancelled after it opened is heard on its channel
        assert store.cancel(kept) is True
        assert feed.may_start(kept) is False
    finally:
        feed.close()


def test_a_feed_lagging_far_behind_waits_for_the_replies_it_is_owed(transport, monkeypatch):
    """Past ``MOST_UNREAD`` unanswered writes a write reads every reply first, and never
    waits for one of a write not sent yet. (Fails when the new write is counted as sent
    before it is: the read times out, and the writes are made again.)"""
    monkeypatch.setattr(statusfeed, "READ_EVERY", 1)
    monkeypatch.setattr(statusfeed, "MOST_UNREAD", 2)
    store, queue = transport.state(), unique_queue()
    ids = [new_task_id() for _ in range(20)]
    store.submitted(queue, ids, 0, SubmitOptions())
    feed = store.feed(queue)
    redone: list[BaseException] = []
    monkeypatch.setattr(feed, "_redo", redone.append)
    for task_id in ids:
        feed.started(task_id, 1)
        feed.settled(task_id, "succeeded", 1, result_json="1")
        assert len(feed._sent) <= 2
    feed.close()
    assert redone == []  # no timeout, no write made again
    assert {s.state for s in store.statuses(ids) if s is not None} == {"succeeded"}


def test_a_write_made_while_redis_is_away_is_kept_with_those_before_it(transport, monkeypatch):
    """A write sent while the feed cannot reconnect, with earlier writes still to make
    again, is kept after them (made by the next call, or ``close``), not dropped: its
    call raises ``TransportUnavailable`` like the earlier one. Failed before: the second
    outcome was lost (the earlier writes' redo raised before it was queued), and its
    task stayed ``queued`` for good."""
    from asynctask.errors import TransportUnavailable

    store, queue = transport.state(), unique_queue()
    first, second = store.submitted(queue, [new_task_id(), new_task_id()], 0, SubmitOptions())
    feed = store.feed(queue)
    server = transport.server

    def gave_up(fn, *args):
        raise TransportUnavailable("Redis is away (retry_timeout passed)")

    # Given a Redis that cannot be reached, and a transport whose retries give up
    with monkeypatch.context() as away:
        away.setattr(server, "pool_for", lambda key: _Away())
        away.setattr(transport, "_call", gave_up)
        # When two outcomes are written through the feed meanwhile, each sent at once
        # (a success is held for the next write: ``flush`` sends it)
        # (each call is told: the write stays to be made again)
        for task_id in (first, second):
            feed.settled(task_id, "succeeded", 1, result_json="1")
            with pytest.raises(TransportUnavailable):
                feed.flush()
        # Then both wait to be made again, in order
        assert [w.task_id for s in feed._sent for w in s.writes] == [first, second]
    # And once Redis is back, close makes them
    feed.close()
    assert [s.state if s else None for s in store.statuses([first, second])] == [
        "succeeded",
        "succeeded",
    ]


class _Away:
    """A connection pool of a Redis that cannot be reached."""

    def get_connection(self, *args, **kwargs):
        from redis.exceptions import ConnectionError as RedisConnectionError

        raise RedisConnectionError("Redis is away")


def test_a_write_after_redis_came_back_makes_those_kept_first(transport, monkeypatch):
    """Writes kept while Redis was away longer than ``retry_timeout`` are made first, in
    order, by the next write once it is back, not left behind on a new connection. A
    consumer goes on after such an outage (``Consumer.flush_status_feed`` swallows it).
    (Failed before: the next write opened a new connection while the kept ones waited
    for replies; its reply was taken for the first kept one, which was never made
    (``queued``), and ``close`` hung waiting for replies that never came.)"""
    from asynctask.errors import TransportUnavailable

    store, queue = transport.state(), unique_queue()
    first, second, third = store.submitted(
        queue, [new_task_id(), new_task_id(), new_task_id()], 0, SubmitOptions()
    )
    feed = store.feed(queue)

    def gave_up(fn, *args):
        raise TransportUnavailable("Redis is away (retry_timeout passed)")

    # Given two successes kept while Redis was away past the transport's retries
    with monkeypatch.context() as away:
        away.setattr(transport.server, "pool_for", lambda key: _Away())
        away.setattr(transport, "_call", gave_up)
        for task_id in (first, second):
            feed.settled(task_id, "succeeded", 1, result_json="1")
            with pytest.raises(TransportUnavailable):
                feed.flush()
    # When Redis is back and the consumer's next task fails (an outcome sent at once)
    feed.settled(third, "failed", 1, error="ValueError: x")
    # Then close ends, and every outcome is written, the kept ones too
    closing = threading.Thread(target=feed.close, daemon=True)
    closing.start()
    closing.join(15)
    states = [s.state if s else None for s in store.statuses([first, second, third])]
    assert not closing.is_alive(), f"close hangs; states {states}"
    assert states == ["succeeded", "succeeded", "failed"]


def test_the_flusher_tries_once_and_leaves_the_retries_to_the_consumer(transport, monkeypatch):
    """The feed's thread, sending what is held while Redis is away, tries once and
    keeps the writes: it holds the feed's lock meanwhile, so its retries (up to
    ``retry_timeout``) held back the consumer's starts and outcomes. The consumer's
    next call makes them. (Fails when the thread's send retries: its look took the
    whole ``retry_timeout``, here 2 s; at 1 s it took 0.78 s, 5 tries.)"""
    from asynctask.errors import TransportUnavailable

    monkeypatch.setattr(statusfeed, "HOLD", 60.0)  # (only this test's looks send)
    monkeypatch.setattr(transport, "retry_timeout", 2.0)
    store, queue = transport.state(), unique_queue()
    (task,) = store.submitted(queue, [new_task_id()], 0, SubmitOptions())
    feed = store.feed(queue)
    tries: list[object] = []

    def away(*args):
        tries.append(args)
        raise TransportUnavailable("Redis is away")

    try:
        feed.settled(task, "succeeded", 1, result_json='"ok"')
        # Given a Redis that cannot be reached
        with monkeypatch.context() as cut:
            cut.setattr(transport.server, "pool_for", lambda key: _Away())
            cut.setattr(transport, "execute", away)
            # When the thread's look finds the success due
            began = time.monotonic()
            while feed.flush_marks(time.monotonic() + 61) is not None:
                pass  # (the thread itself was looking: the lock was taken)
            took = time.monotonic() - began
            # Then it tried once, soon, and the write is kept
            assert took < 0.5 and len(tries) == 1, (took, len(tries))
            assert [w.task_id for s in feed._sent for w in s.writes] == [task]
        # And once Redis is back, the consumer's next call makes it
        feed.flush()
        assert store.wait(task, timeout=5).result == "ok"
    finally:
        feed.close()


def _tls_pair(folder):
    """A connected client and server ``SSLSocket`` on a socket pair (a self-signed
    certificate made with the ``openssl`` command)."""
    import socket
    import ssl
    import subprocess
    import threading

    cert, key = folder / "cert.pem", folder / "key.pem"
    made = ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"]
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", *made],
        check=True,
        capture_output=True,
    )
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    # (TLS 1.2: no session tickets on the socket after the handshake)
    server_context.maximum_version = ssl.TLSVersion.TLSv1_2
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.check_hostname = False
    client_context.verify_mode = ssl.CERT_NONE
    a, b = socket.socketpair()
    served: list[ssl.SSLSocket] = []
    handshake = threading.Thread(
        target=lambda: served.append(server_context.wrap_socket(a, server_side=True))
    )
    handshake.start()
    client = client_context.wrap_socket(b, server_hostname="localhost")
    handshake.join(10)
    return client, served[0]


def test_a_quiet_feed_under_tls_looks_at_the_bytes_tls_holds(tmp_path):
    """Under TLS a cancel may be decrypted already, held by the SSL object, while the
    socket has nothing more to read: ``select`` alone says quiet, and a start would miss
    the cancel. ``CancelFeed.quiet`` asks the SSL object too (``pending``). (Failed
    before: quiet() was True with 62 bytes of a pushed message pending.)"""
    import select

    from asynctask_redis.cancelfeed import CancelFeed

    client, server = _tls_pair(tmp_path)
    try:
        feed = CancelFeed(pool=None, channel="q:cancels")

        class _Conn:
            _sock = client

        feed._conn = _Conn()
        assert feed.quiet() is True  # nothing sent yet
        # When a pushed message arrives, and part of its TLS record was read (the rest
        # decrypted and held by the SSL object, nothing left on the socket)
        server.sendall(b">3\r\n$7\r\nmessage\r\n$1\r\nq\r\n$32\r\n" + b"a" * 32 + b"\r\n")
        assert select.select([client], [], [], 5)[0] == [client]
        assert client.recv(1) == b">"
        assert client.pending() > 0 and select.select([client], [], [], 0)[0] == []
        # Then the feed is not quiet
        assert feed.quiet() is False
    finally:
        client.close()
        server.close()


def test_a_feed_ignores_cancels_past_their_horizon(transport, client):
    """An entry of ``P:Q:cancelled`` stays there after its status ttl until the next cancel
    trims the set: a feed opening meanwhile must not count it (a start of that id is
    held back for nothing, and enough of them kept the feed closed, every start waiting
    for Redis). (Failed before: the feed loaded the whole set, stale ids too.)"""
    store, queue = transport.state(), unique_queue()
    stale, live = new_task_id(), new_task_id()
    (kept,) = store.submitted(queue, [new_task_id()], 0, SubmitOptions())
    seconds, micros = client.time()
    now_ms = seconds * 1000 + micros // 1000
    client.zadd(statusfeed.registry_key(transport, queue), {stale: now_ms - 1000})
    client.zadd(statusfeed.registry_key(transport, queue), {live: now_ms + 60_000})
    feed = store.feed(queue)
    try:
        assert feed.may_start(stale) is True
        assert feed.may_start(live) is False
        assert feed.may_start(kept) is True
    finally:
        feed.close()
        client.delete(statusfeed.registry_key(transport, queue))


def test_a_busy_consumers_writes_go_together_and_an_idle_ones_start_at_once(transport, monkeypatch):
    """A consumer's first start after it waited goes at once (the task reads
    ``running`` from its start on); while writes are held (a drain), the success of one
    task, the next start and its success go in one message, sent by ``flush`` at the
    latest; a start held with its success is one write. (Fails when each write is sent
    on its own: four messages; or when the first start is held: none before flush.)"""
    store, queue = transport.state(), unique_queue()
    first, second = store.submitted(queue, [new_task_id(), new_task_id()], 0, SubmitOptions())
    feed = store.feed(queue)
    try:
        feed._connection()
        sent: list[bytes] = []

        class _Counting:  # the connection's socket, its sends counted
            def __init__(self, sock):
                self.sock = sock

            def sendall(self, data):
                sent.append(data)
                return self.sock.sendall(data)

        monkeypatch.setattr(feed._conn, "_sock", _Counting(feed._conn._sock))
        # Given a consumer that starts a task after it waited: sent at once
        feed.started(first, 1)
        assert len(sent) == 1
        _eventually(lambda: store.statuses([first])[0].state == "running")
        # When it succeeds, and the next one starts and succeeds
        feed.settled(first, "succeeded", 1, result_json='"one"')
        feed.started(second, 1)
        feed.settled(second, "succeeded", 1, result_json='"two"')
        # Then they are held, and go in one message
        assert len(sent) == 1
        feed.flush()
        assert len(sent) == 2
        assert store.wait(first, timeout=5).result == "one"
        done = store.wait(second, timeout=5)
        assert (done.state, done.result, done.attempts) == ("succeeded", "two", 1)
        assert done.started_at is not None and done.started_at <= done.finished_at
    finally:
        feed.close()


def _eventually(check, timeout: float = 2.0) -> None:
    """Wait for a write sent without waiting to be read back (another connection)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.005)


def test_a_success_held_is_sent_within_hold_seconds_with_no_other_call(transport):
    """A success held for the next write goes alone once ``HOLD`` has passed, whatever
    the consumer does meanwhile (a rate limit, a long task of another slot). (Fails
    with no thread to send it: the outcome waits for the consumer's next call.)"""
    store, queue = transport.state(), unique_queue()
    (task,) = store.submitted(queue, [new_task_id()], 0, SubmitOptions())
    feed = store.feed(queue)
    try:
        # Given a started task that succeeds, and no other call on its feed
        feed.started(task, 1)
        feed.settled(task, "succeeded", 1, result_json='"ok"')
        # Then its outcome is written all the same, soon
        began = time.monotonic()
        done = store.wait(task, timeout=5)
        assert done.state == "succeeded" and done.result == "ok"
        assert time.monotonic() - began < 1.0
    finally:
        feed.close()


def test_a_start_refused_meanwhile_is_told_and_the_replies_after_it_stay_in_step(
    transport, monkeypatch, caplog
):
    """The replies of writes whose starts all ran (``0``) are taken straight from the
    socket; one that says a start was refused (a cancel came before its mark) goes
    through the parser, is logged, and the replies after it are still read in step.
    (Fails when the reader miscounts: a reply left unread, or one taken for another.)"""
    monkeypatch.setattr(statusfeed, "READ_EVERY", 1)  # read at every write
    store, queue = transport.state(), unique_queue()
    ids = [new_task_id() for _ in range(4)]
    a, b, c, d = store.submitted(queue, ids, 0, SubmitOptions())
    feed = store.feed(queue)
    try:
        # Given a task cancelled after its consumer's feed said it may start
        assert store.cancel(b) is True
        # When the feed marks it running (after a task that ran), and then others
        feed.started(a, 1)
        feed.settled(a, "succeeded", 1)
        feed.started(b, 1)
        assert store.wait(a, timeout=5).state == "succeeded"  # (its reply came)
        for task_id in (c, d):
            feed.started(task_id, 1)
            feed.settled(task_id, "succeeded", 1, result_json=f'"{task_id}"')
            assert store.wait(task_id, timeout=5).state == "succeeded"
        assert len(feed._sent) <= 1  # every reply that came was read
    finally:
        feed.close()
    # Then the refused start was told, and every write was made in order
    refused = [r.getMessage() for r in caplog.records if b in r.getMessage()]
    assert len(refused) == 1 and "was cancelled as it started" in refused[0], refused
    found = {s.id: s for s in store.statuses([a, b, c, d]) if s is not None}
    assert [found[x].state for x in (a, b, c, d)] == [
        "succeeded",
        "cancelled",
        "succeeded",
        "succeeded",
    ]
    assert (found[c].result, found[d].result) == (c, d)


def test_a_flush_before_an_ack_waits_for_every_reply_and_close_then_owes_none(transport):
    """``flush(waiting=False)``, before the broker is told a task is done, reads every
    reply (the outcome is stored: a killed worker cannot take it along, see
    tests/amqp/test_status.py's ``late`` way); a ``close`` after it, owed nothing,
    returns at once (a blocking read of no reply would wait for good)."""
    store, queue = transport.state(), unique_queue()
    ids = [new_task_id() for _ in range(3)]
    store.submitted(queue, ids, 0, SubmitOptions())
    feed = store.feed(queue)
    closed = threading.Event()
    try:
        for task_id in ids:
            assert feed.may_start(task_id)
            feed.started(task_id, 1)
            feed.settled(task_id, "succeeded", 1, result_json="1")
            # When the run loop flushes before its ack
            feed.flush(waiting=False)
            # Then nothing is owed, and Redis has the outcome
            assert not feed._sent and not feed._held
            assert store.statuses([task_id])[0].state == "succeeded"
    finally:
        closer = threading.Thread(target=lambda: (feed.close(), closed.set()), daemon=True)
        closer.start()
        assert closed.wait(5), "close waited for a reply it was never owed"


def test_a_cancel_that_reaches_redis_before_a_start_mark_keeps_the_attempt_that_ran(
    transport, monkeypatch, caplog
):
    """A feed's starts are not waited for: a cancel can reach Redis after the worker
    started a task but before its mark did. The task runs all the same (its verdict
    comes late), so it reads ``cancelled`` with the attempt it ran and when it
    started, as a cancel after the mark leaves it. Both shapes: a mark sent at once
    (the first start after the consumer waited), and one held and sent with its
    success. (Failed before: attempts 0 and no started_at for both; the AMQP status
    contract's in-process cancel story failed that way 12 runs in 50 at load ~15.)"""
    caplog.set_level(logging.WARNING, logger="asynctask.redis")
    store, queue = transport.state(), unique_queue()
    first, second = store.submitted(queue, [new_task_id(), new_task_id()], 0, SubmitOptions())
    feed = store.feed(queue)
    try:
        feed._connection()
        real = feed._conn._sock
        late: list[bytes] = []

        class _Late:  # the feed's socket: what is sent waits until the test lets it go
            def sendall(self, data):
                late.append(data)

        # Given a task a worker started after it waited: its mark sent at once, but slow
        monkeypatch.setattr(feed._conn, "_sock", _Late())
        assert feed.may_start(first)
        feed.started(first, 1)
        assert len(late) == 1
        # When it is cancelled before the mark reaches Redis (the delay injected)
        assert store.cancel(first) is True
        monkeypatch.setattr(feed._conn, "_sock", real)
        for data in late:
            real.sendall(data)
        # And it returns; then the next task starts (its mark held for its outcome), is
        # cancelled, and returns
        feed.settled(first, "succeeded", 1, result_json='"discarded"')
        assert feed.may_start(second)
        feed.started(second, 1)
        assert store.cancel(second) is True
        feed.settled(second, "succeeded", 1, result_json='"discarded"')
        feed.flush()
    finally:
        feed.close()
    # Then both read cancelled, with the attempt that ran and when it started (as Redis
    # reckons it: its time less the start's age when sent, so it may come after the
    # cancel's time by the send's delay)
    found = store.statuses([first, second])
    assert [(s.state, s.attempts, s.result) for s in found] == [("cancelled", 1, None)] * 2, [
        (s.state, s.attempts, s.started_at, s.finished_at) for s in found
    ]
    assert all(s.started_at is not None and s.started_at >= s.submitted_at for s in found)
    # And the late verdicts were told
    told = [
        r.getMessage() for r in caplog.records if "was cancelled as it started" in r.getMessage()
    ]
    assert len(told) == 2, told


def test_a_late_start_never_undoes_an_outcome_written_before_it_arrived(transport):
    """A start sent unanswered that reaches Redis after the task's outcome (a relay that
    makes the writes later, beside a direct ``settled``) leaves the outcome. (Fails when
    a feed's start writes ``running`` over any state but a cancel: it read ``running``
    for good, and a ``wait`` on it never returned: the AMQP bench's wait step.)"""
    store, queue = transport.state(), unique_queue()
    (task_id,) = store.submitted(queue, [new_task_id()], 0, SubmitOptions())
    store.settled(queue, task_id, "succeeded", 1, result_json='"ok"')
    feed = store.feed(queue)
    try:
        assert feed.may_start(task_id) is True
        feed.started(task_id, 1)  # (the first since a wait: sent at once)
    finally:
        feed.close()  # (every reply read)
    status = store.statuses([task_id])[0]
    assert status is not None
    assert (status.state, status.result) == ("succeeded", "ok")


def test_a_late_start_never_undoes_the_retrying_of_its_own_attempt(transport):
    """A start of attempt 1 that reaches Redis after that attempt's ``retrying`` (the
    relay made the start, the worker the outcome, directly) leaves ``retrying``; the
    start of the next attempt still reads ``running``. (Fails when only ``succeeded``
    and ``failed`` are kept: the task read ``running`` through its back-off.)"""
    store, queue = transport.state(), unique_queue()
    (task_id,) = store.submitted(queue, [new_task_id()], 0, SubmitOptions())
    store.settled(queue, task_id, "retrying", 1, error="boom")
    feed = store.feed(queue)
    try:
        feed.started(task_id, 1)  # late: the retry of attempt 1 came first
        feed.flush()
        status = store.statuses([task_id])[0]
        assert status is not None and (status.state, status.attempts) == ("retrying", 1)
        feed.started(task_id, 2)  # the next attempt's start
    finally:
        feed.close()
    status = store.statuses([task_id])[0]
    assert status is not None and (status.state, status.attempts) == ("running", 2)
