"""Task statuses on the redis transport (DESIGN.md section 6): what its scripts write
beside the queue, read back through the API and checked in Redis itself.

The shared ``StatusContract`` runs the whole lifecycle through real workers; these tests
hold the redis-specific promises: the states fused into the queue's own calls, priority
through the ``urgent`` sorted set (and the nudge that wakes a blocked consumer), the
unique key taken in the submit's script, expiry of final statuses by Redis itself, and
the generic ``StateStore`` another transport uses through ``asynctask_state``.
"""

from __future__ import annotations

import json
import multiprocessing
import socket
import threading
import time
from typing import Any

import pytest
import redis

from asynctask.runner import LoopOptions, run_loop
from asynctask.status import StatusNotTracked, SubmitOptions
from asynctask.testing import unique_queue
from asynctask.testing.contract import open_transport
from asynctask.testing.status import StatusContract
from asynctask.transport import Consumer, Delivery, new_task_id
from asynctask.worker import AsyncTaskWorker
from asynctask_redis import consumer as redis_consumer
from asynctask_redis import startmarks
from asynctask_redis.transport import RedisTransport
from chaos.private_redis import private_redis
from support import cancel_while_running_in_process, killed_after_the_fail
from tests.redis.test_contract import RedisProbe


def task_key(t: RedisTransport, queue: str, task_id: str) -> str:
    return f"{t.prefix}:{queue}:task:{task_id}"


def take(consumer: Consumer, timeout: float = 5) -> Delivery:
    delivery = consumer.reserve(timeout=timeout)
    assert delivery is not None, "no task came"
    return delivery


# -- the lifecycle, fused into the queue's calls ------------------------------------------


def _run_all(consumer: Any) -> list[str]:
    """Take, start and acknowledge what the consumer gets until it gets nothing for
    0.5 s, then close it: the ids it ran, in order."""
    got = []
    while (delivery := consumer.reserve(timeout=0.5)) is not None:
        got.append(delivery.id)
        assert consumer.start(delivery) == "run"
        consumer.ack(delivery)
    consumer.close()
    return got


def test_a_task_goes_queued_running_succeeded_with_its_result(transport, queue, client):
    # Given a submitted task
    tid = transport.submit_task(queue, {"n": 1})
    st = transport.status(tid)
    assert st is not None and (st.state, st.attempts, st.queue) == ("queued", 0, queue)
    assert st.submitted_at is not None and abs(st.submitted_at - time.time()) < 5
    # When a worker reserves it to start it now: the move marks it running
    consumer = transport.consumer(queue)
    delivery = take(consumer)
    assert client.hget(task_key(transport, queue, tid), "state") == b"running"
    assert consumer.start(delivery) == "run"
    st = transport.status(tid)
    assert (st.state, st.attempts) == ("running", 1) and st.started_at is not None
    # When it is acked with a result (sent with the consumer's next call)
    consumer.ack(delivery, json.dumps({"sum": [1, 2]}))
    assert consumer.reserve(timeout=0) is None
    # Then it succeeded with that result, and forgets it after the ttl
    st = transport.status(tid)
    assert st.state == "succeeded" and st.result == {"sum": [1, 2]} and st.final
    assert st.finished_at is not None and st.finished_at >= st.started_at
    assert 0 < client.pttl(task_key(transport, queue, tid)) <= transport.status_ttl * 1000
    assert transport.wait(tid, timeout=0) == st
    consumer.close()


def test_retry_then_fail_records_attempts_and_errors(transport, queue, client):
    tid = transport.submit_task(queue, {})
    consumer = transport.consumer(queue)
    first = take(consumer)
    assert consumer.start(first) == "run"
    consumer.retry(first, 0.01, "boom 1")
    st = transport.status(tid)
    assert (st.state, st.attempts, st.error) == ("retrying", 1, "boom 1")
    second = take(consumer)
    assert second.attempt == 2 and consumer.start(second) == "run"
    assert transport.status(tid).state == "running"
    consumer.fail(second, "boom 2")
    st = transport.status(tid)
    assert (st.state, st.attempts, st.error) == ("failed", 2, "boom 2")
    # a failed status lives as long as its failed record: no expiry
    assert client.pttl(task_key(transport, queue, tid)) == -1
    # a requeue makes it queued again, and a purge of the failed store forgets it
    assert transport.requeue_failed(queue, [tid]) == 1
    assert transport.status(tid).state == "queued"
    third = take(consumer)
    consumer.fail(third, "boom 3")
    assert transport.purge_failed(queue) == 1
    assert transport.status(tid) is None
    consumer.close()


def test_a_cancelled_waiting_task_never_runs(transport, queue):
    first, second = transport.submit_tasks(queue, [{"n": 1}, {"n": 2}])
    assert transport.cancel(first) is True
    assert transport.cancel(first) is False  # final already
    assert transport.status(first).state == "cancelled"
    consumer = transport.consumer(queue)
    delivery = take(consumer)
    assert delivery.id == second  # the cancelled one was dropped on the way
    assert consumer.start(delivery) == "run"
    consumer.ack(delivery)
    assert consumer.reserve(timeout=0) is None
    assert transport.status(first).state == "cancelled"
    assert transport.queue_stats(queue).ready == 0
    consumer.close()


def test_a_task_cancelled_before_the_move_is_dropped_even_taken_ahead(transport, queue, client):
    """A move checks the tasks it takes ahead only while some cancelled task has not been
    met (``P:Q:cancelled``): one cancelled before the consumer's cancel feed existed is
    dropped on the way, never handed out, and once met the set is empty again, so that
    moves skip the checks. (Fails with a move that never checks the tasks taken ahead:
    the cancelled one is handed out and its start, hearing nothing, runs it.)"""
    cancelled = f"{transport.prefix}:{queue}:cancelled"
    # Given three waiting tasks, the second cancelled before any consumer subscribed
    first, doomed, third = transport.submit_tasks(queue, [{"n": n} for n in range(3)])
    assert transport.cancel(doomed) is True
    assert client.zscore(cancelled, doomed) is not None
    # When a consumer takes them all at once (prefetch 3) and runs what it gets
    consumer = transport.consumer(queue, prefetch=3)
    got = _run_all(consumer)
    # Then the cancelled one never came, the others ran, and the set forgot it
    assert got == [first, third]
    assert transport.status(doomed).state == "cancelled"
    assert transport.status(third).state == "succeeded"
    assert client.exists(cancelled) == 0


def test_a_task_taken_ahead_is_checked_when_it_starts(transport, queue):
    # Given a consumer holding two tasks (prefetch 2), the second cancelled meanwhile
    _first, second = transport.submit_tasks(queue, [{"n": 1}, {"n": 2}])
    consumer = transport.consumer(queue, prefetch=2)
    one = take(consumer)
    assert transport.status(second).state == "queued"  # prefetched, not started
    two = take(consumer)
    assert transport.cancel(second) is True
    # Then its start says so, and it is gone (not in flight, not failed)
    assert consumer.start(one) == "run"
    assert consumer.start(two) == "cancelled"
    consumer.ack(one)
    assert consumer.reserve(timeout=0) is None
    stats = transport.queue_stats(queue)
    assert (stats.ready, stats.in_flight, stats.failed) == (0, 0, 0)
    consumer.close()


def test_a_cancel_past_its_horizon_does_not_make_moves_check_their_tasks():
    """A move checks the tasks it takes ahead (an HMGET each) while ``P:Q:cancelled``
    holds a cancel not met yet; an entry past its horizon (its status forgotten, the set
    trimmed only by the next cancel) must not count, or one cancel made every move of the
    next day check all it took. Counted on a private Redis (INFO commandstats). (Failed
    before: 3 HMGETs for a move of 3, not 1, the first task's running mark.)"""
    with private_redis(appendonly=False) as server:
        transport = open_transport(server.uri())
        client = redis.Redis(host=server.address, port=server.port)
        try:
            queue = unique_queue()
            transport.submit_tasks(queue, [{"n": n} for n in range(3)])
            seconds, micros = client.time()
            stale_at = seconds * 1000 + micros // 1000 - 1000
            client.zadd(f"{transport.prefix}:{queue}:cancelled", {new_task_id(): stale_at})
            consumer = transport.consumer(queue, prefetch=3)
            client.config_resetstat()
            take(consumer)  # one move of all three
            hmget = client.info("commandstats").get("cmdstat_hmget", {}).get("calls", 0)
            consumer.close()
        finally:
            client.close()
            transport.close()
    assert hmget == 1, hmget


def _drained_on_a_private_redis(tasks: int, unique: bool = False) -> tuple[dict[str, int], Any]:
    """A consumer at prefetch ``tasks`` takes, starts and acks ``tasks`` tasks on a
    private Redis (their successes go with its next move); returns the commands Redis
    ran for that move (INFO commandstats, calls by command) and, for each task, its
    status, the TTLs of its record and pointer and whether its unique key is held."""
    with private_redis(appendonly=False) as server:
        transport = open_transport(server.uri())
        client = redis.Redis(host=server.address, port=server.port)
        try:
            queue = unique_queue()
            ids = [
                transport.submit_task(queue, {"n": n}, unique_key=f"u{n}" if unique else None)
                for n in range(tasks)
            ]
            consumer = transport.consumer(queue, prefetch=tasks)
            for _ in range(tasks):
                delivery = take(consumer)
                assert consumer.start(delivery) == "run"
                consumer.ack(delivery, '"done"')
            client.config_resetstat()
            assert consumer.reserve(timeout=0) is None  # the acks go with this move
            consumer.close()  # (after the reply to the acks' script, if sent apart)
            stats = client.info("commandstats")
            calls = {name[8:]: int(v["calls"]) for name, v in stats.items()}
            found = []
            for tid in ids:
                st = transport.status(tid)
                record = client.pttl(task_key(transport, queue, tid))
                pointer = client.pttl(f"{transport.prefix}:@id:{tid}")
                held = client.exists(f"{transport.prefix}:{queue}:unique:u{ids.index(tid)}")
                found.append((st, record, pointer, held))
        finally:
            client.close()
            transport.close()
    return calls, found


def test_a_drains_successes_read_no_status_when_nothing_can_need_it():
    """Issue 20: a success is written without a read of its status when the queue has
    no cancel pending and no unique keys, and no waiter's mark is on the batch (one
    EXISTS for the batch): the move's HMGET a task was a sixth of Redis's work a task
    in a tracked drain at prefetch 32. Counted on a private Redis (INFO commandstats).
    (Failed before: 8 HMGETs for the 8 successes.)"""
    calls, found = _drained_on_a_private_redis(8)
    assert calls.get("hmget", 0) == 0, calls
    for st, record, pointer, _ in found:
        assert (st.state, st.attempts, st.result) == ("succeeded", 1, "done")
        assert st.started_at is not None and st.finished_at is not None
        assert st.started_at <= st.finished_at
        assert record > 0 and pointer > 0  # forgotten by Redis later, both


def test_a_drains_successes_free_the_unique_keys_they_hold():
    """The read is kept where a success has more to do: a queue whose tasks have held
    unique keys frees each success's key (``P:Q:uniques``, set by such a submit)."""
    calls, found = _drained_on_a_private_redis(4, unique=True)
    assert calls.get("hmget", 0) == 4, calls
    for st, record, pointer, held in found:
        assert st.state == "succeeded" and record > 0 and pointer > 0
        assert held == 0


def test_a_tracked_move_is_answered_before_its_acks_statuses_are_written(monkeypatch):
    """Issue 20/16: with ``split_acks`` on, a tracked move of many acks takes first
    (``NEXT`` with no acks) and sends the acks' status writes after its reply, in a
    ``START`` of their own, so that Redis writes them while the worker runs the new
    batch. Seen in a private Redis's slow log. (Failed before: the move's one ``NEXT``
    carried the 8 acks.)"""
    from asynctask_redis import scripts

    monkeypatch.setattr(redis_consumer.RedisConsumer, "split_acks", 8)
    with private_redis(appendonly=False) as server:
        transport = open_transport(server.uri())
        client = redis.Redis(host=server.address, port=server.port)
        try:
            queue = unique_queue()
            ids = transport.submit_tasks(queue, [{"n": n} for n in range(16)])
            consumer = transport.consumer(queue, prefetch=8)
            for _ in range(8):
                delivery = take(consumer)
                assert consumer.start(delivery) == "run"
                consumer.ack(delivery)
            client.config_set("slowlog-log-slower-than", 0)
            client.slowlog_reset()
            take(consumer)  # the second move: its acks go after it
            client.config_set("slowlog-log-slower-than", 10000)
            log = [e["command"].split() for e in reversed(client.slowlog_get(1000))]
            scripted = [w for w in log if w[0].upper() == b"EVALSHA"]
            # (a NOSCRIPT first on this fresh server: NEXT is loaded, then run again)
            assert [w[1].decode() for w in scripted[-2:]] == [scripts.NEXT.sha, scripts.START.sha]
            # (the log's words joined by spaces: the empty arguments are not among them)
            assert scripted[-2][-1] == b"0", scripted[-2]  # the move carries no ack
            assert scripted[-1][10] == b"8", scripted[-1]  # they come after it
            # and the acked are gone from the list, succeeded; the new batch is held
            consumer.reserve(timeout=0)  # (reads the acks' reply first)
            held = client.lrange(f"{transport.prefix}:{queue}:processing:{consumer.id}", 0, -1)
            assert len(held) == 8
            assert [transport.status(i).state for i in ids[:8]] == ["succeeded"] * 8
            consumer.close()
        finally:
            client.close()
            transport.close()


def test_a_success_in_a_batch_wakes_its_waiter_at_once(transport, queue, client):
    """A waiter marked on one task of a batch (``waiting:<id>``, seen by the batch's one
    EXISTS) is woken by the success, not by its fallback poll."""
    # Given four tasks, a consumer holding all of them, and a waiter on the third
    ids = transport.submit_tasks(queue, [{"n": n} for n in range(4)])
    consumer = transport.consumer(queue, prefetch=4)
    deliveries = [take(consumer) for _ in range(4)]
    store = transport.state()
    store.fallback_poll = 10.0
    woken: list[Any] = []
    waiter = threading.Thread(target=lambda: woken.append(store.wait(ids[2], timeout=8)))
    waiter.start()
    deadline = time.monotonic() + 5
    key = f"{transport.prefix}:{queue}:waiting:{ids[2]}".encode()
    while not client.exists(key):
        assert time.monotonic() < deadline, "the waiter never marked"
        time.sleep(0.01)
    # When all four run and their successes go with the next move
    for delivery in deliveries:
        assert consumer.start(delivery) == "run"
        consumer.ack(delivery)
    began = time.monotonic()
    assert consumer.reserve(timeout=0) is None
    waiter.join(9)
    # Then the waiter returns at once with the success
    assert time.monotonic() - began < 1.0
    assert woken and woken[0].state == "succeeded"
    consumer.close()


def test_a_cancelled_running_task_keeps_cancelled_and_is_not_retried(transport, queue):
    tid = transport.submit_task(queue, {})
    consumer = transport.consumer(queue)
    delivery = take(consumer)
    assert consumer.start(delivery) == "run"
    assert transport.cancel(tid) is True
    # (True: the run loop logs that it was dropped, not retried)
    assert consumer.retry(delivery, 0, "it raised while being cancelled") is True
    assert consumer.reserve(timeout=0.2) is None  # not retried
    st = transport.status(tid)
    assert st.state == "cancelled" and st.result is None
    consumer.close()
    # and an ack's result is discarded
    tid = transport.submit_task(queue, {})
    consumer = transport.consumer(queue)
    delivery = take(consumer)
    transport.cancel(tid)
    consumer.ack(delivery, "42")
    consumer.close()
    assert transport.status(tid).state == "cancelled"


def test_a_cancel_before_a_held_start_mark_keeps_the_attempt_that_ran(
    transport, queue, monkeypatch
):
    """A consumer holds the running mark of a task that is not the first of its move
    (sent with its next call, or ``startmarks.DEFER`` later): a cancel can come between
    the start and the mark. The task runs all the same, so it reads ``cancelled`` with
    the attempt it ran and when it started. Both shapes: the mark alone (the task
    raised and was dropped) and the mark with its ack. (Failed before: attempts 0 and
    no started_at.)"""
    # Given marks that wait for the consumer's next call (no thread sends them first)
    monkeypatch.setattr(startmarks, "DEFER", 60.0)
    monkeypatch.setattr(redis_consumer, "DEFER", 60.0)
    ids = transport.submit_tasks(queue, [{}, {}, {}])
    consumer = transport.consumer(queue, prefetch=3)
    try:
        first = take(consumer)
        assert consumer.start(first) == "run"  # the move marked it running
        consumer.ack(first)
        # When the next task starts (its mark held), is cancelled, and returns
        second = take(consumer)
        assert consumer.start(second) == "run"
        assert transport.cancel(second.id) is True
        consumer.ack(second, "42")
        # And the one after starts, is cancelled, and its mark goes alone (it raised)
        third = take(consumer)
        assert consumer.start(third) == "run"
        assert transport.cancel(third.id) is True
        assert consumer.retry(third, 0, "raised after its cancel") is True
        assert consumer.reserve(timeout=0.2) is None  # not retried
    finally:
        consumer.close()
    # Then both read cancelled, with the attempt that ran and when it started (Redis's
    # time less the mark's age when sent: later than the cancel by the send's delay)
    found = transport.statuses(ids[1:])
    assert [(s.state, s.attempts, s.result) for s in found] == [("cancelled", 1, None)] * 2, [
        (s.state, s.attempts, s.started_at, s.finished_at) for s in found
    ]
    assert all(s.started_at and s.started_at >= s.submitted_at for s in found), found


def test_a_task_cancelled_while_it_runs_logs_its_result_discarded(transport, queue, caplog):
    """The ack of a task whose cancel the consumer's cancel feed heard says so, and the
    run loop logs it. Failed before: the ack returned None (not known), no line."""
    cancel_while_running_in_process(transport, queue, caplog)


def test_a_purge_forgets_the_statuses_kept_in_pgsql(transport, queue, client, pgsql_state):
    """The contract's purge story with this transport's statuses in PostgreSQL
    (``asynctask_state``). Failed before: the purge cleared only Redis, so PostgreSQL
    still read the purged tasks queued."""
    transport.state_uri = pgsql_state
    try:
        StatusContract.purge_story(transport, queue, RedisProbe(client, transport.prefix, ""))
    finally:
        transport.state_uri = None


def test_a_task_past_expires_reads_expired_and_never_runs(transport, queue, client):
    tid = transport.submit_task(queue, {"late": True}, expires=0.2)
    keep = transport.submit_task(queue, {"late": False}, expires=60)
    assert transport.status(tid).state == "queued"
    time.sleep(0.3)
    st = transport.status(tid)
    assert st.state == "expired" and st.final  # read so before any worker meets it
    consumer = transport.consumer(queue)
    delivery = take(consumer)
    assert delivery.id == keep  # the expired one was dropped on the way
    assert consumer.start(delivery) == "run"
    consumer.ack(delivery)
    assert consumer.reserve(timeout=0) is None
    assert transport.status(tid).state == "expired"
    assert client.pttl(task_key(transport, queue, tid)) > 0  # forgotten by Redis later
    assert transport.queue_stats(queue).failed == 0
    consumer.close()


def test_a_release_or_close_hands_a_running_task_back_as_queued(transport, queue):
    tid = transport.submit_task(queue, {})
    consumer = transport.consumer(queue)
    delivery = take(consumer)
    assert consumer.start(delivery) == "run"
    assert transport.status(tid).state == "running"
    consumer.release(delivery)
    assert transport.status(tid).state == "queued"
    assert consumer.start(take(consumer)) == "run"
    consumer.close()
    assert transport.status(tid).state == "queued"


def test_a_delayed_task_is_delayed_then_queued(transport, queue):
    tid = transport.submit_task(queue, {}, delay=0.2)
    assert transport.status(tid).state == "delayed"
    consumer = transport.consumer(queue)
    delivery = take(consumer)
    assert delivery.id == tid and consumer.start(delivery) == "run"
    consumer.ack(delivery)
    consumer.close()
    assert transport.status(tid).state == "succeeded"


# -- wait ---------------------------------------------------------------------------------


def test_wait_is_woken_by_the_final_write_not_a_poll(transport, queue):
    tid = transport.submit_task(queue, {})
    woke: list[float] = []

    def waiter() -> None:
        st = transport.wait(tid, timeout=20)
        woke.append(time.monotonic())
        assert st.state == "succeeded"

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.3)  # the waiter is blocked now (its first read found "queued")
    consumer = transport.consumer(queue)
    delivery = take(consumer)
    consumer.ack(delivery)
    consumer.close()  # sends the ack
    acked = time.monotonic()
    thread.join(10)
    assert woke and woke[0] - acked < 0.5, f"woke {woke[0] - acked:.3f} s after the ack"


def test_a_waiter_marks_the_status_itself_and_the_final_write_reads_it_there(
    transport, queue, client
):
    """A final write that reads the status hash anyway (here: the queue's tasks have held
    a unique key, see ``test_a_drains_successes_free_the_unique_keys_they_hold``) learns
    that someone waits from its field ``waiting``, not from a key of its own; the key
    ``waiting:<id>`` is what a move's successes look for, one ``EXISTS`` a batch, when
    they read no status (``test_a_success_in_a_batch_wakes_its_waiter_at_once``).
    (Failed before: no field, and without the key the waiter slept until its fallback
    poll.)"""
    transport.submit_task(queue, {}, unique_key="u", delay=3600)
    tid = transport.submit_task(queue, {})
    transport.state().fallback_poll = 30.0
    woke: list[float] = []
    thread = threading.Thread(
        target=lambda: (transport.wait(tid, 20), woke.append(time.monotonic()))
    )
    thread.start()
    time.sleep(0.3)  # the waiter is blocked now
    assert client.hget(task_key(transport, queue, tid), "waiting") == b"1"
    assert client.delete(f"{transport.prefix}:{queue}:waiting:{tid}") == 1
    consumer = transport.consumer(queue)
    consumer.ack(take(consumer))
    consumer.close()  # sends the ack
    acked = time.monotonic()
    thread.join(10)
    assert woke and woke[0] - acked < 0.5, woke
    assert transport.status(tid).state == "succeeded"


def test_wait_times_out_and_knows_unknown_ids(transport, queue):
    tid = transport.submit_task(queue, {})
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        transport.wait(tid, timeout=0.3)
    assert 0.25 < time.monotonic() - started < 2
    with pytest.raises(LookupError):
        transport.wait("0" * 32, timeout=1)
    assert transport.status("0" * 32) is None


def test_wait_returns_when_a_waiting_task_expires(transport, queue):
    tid = transport.submit_task(queue, {}, expires=0.3)
    started = time.monotonic()
    assert transport.wait(tid, timeout=10).state == "expired"
    assert time.monotonic() - started < 2


# -- unique keys ----------------------------------------------------------------------------


def _submit_unique(uri: str, queue: str, times: int, go: Any, out: Any) -> None:
    t = open_transport(uri)
    go.wait()
    ids = {t.submit_task(queue, {}, unique_key="welcome:42") for _ in range(times)}
    out.put(sorted(ids))
    t.close()


def test_a_unique_key_makes_one_task_across_processes_until_it_is_final(
    transport, queue, redis_uri
):
    # Given two processes submitting the same unique key 100 times each, at once
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_submit_unique, args=(redis_uri, queue, 100, go, out)) for _ in range(2)
    ]
    for p in procs:
        p.start()
    go.set()
    seen = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    # Then exactly one task exists, and every submit returned its id
    assert seen[0] == seen[1] and len(seen[0]) == 1
    assert transport.poll_queue(queue) == 1
    (tid,) = seen[0]
    # When it finishes, the key is free again
    consumer = transport.consumer(queue)
    delivery = take(consumer)
    consumer.ack(delivery)
    assert consumer.reserve(timeout=0) is None
    again = transport.submit_task(queue, {}, unique_key="welcome:42")
    assert again != tid and transport.poll_queue(queue) == 1
    # the same key on another queue is another key
    other = transport.submit_task(unique_queue(), {}, unique_key="welcome:42")
    assert other not in (tid, again)
    consumer.close()


def test_a_unique_key_is_freed_when_its_task_expires_unstarted(transport, queue):
    first = transport.submit_task(queue, {}, unique_key="k", expires=0.2)
    assert transport.submit_task(queue, {}, unique_key="k") == first
    time.sleep(0.3)
    assert transport.submit_task(queue, {}, unique_key="k") != first


# -- priority -------------------------------------------------------------------------------


def test_higher_priority_comes_out_first_fifo_within(transport, queue):
    order = [(0, "a"), (5, "b"), (9, "c"), (0, "d"), (5, "e"), (9, "f"), (5, "g")]
    for priority, name in order:
        transport.submit_task(queue, {"name": name}, priority=priority)
    assert transport.poll_queue(queue) == len(order)
    consumer = transport.consumer(queue)
    names = []
    for _ in order:
        delivery = take(consumer)
        names.append(delivery.payload["name"])
        consumer.ack(delivery)
    assert names == ["c", "f", "b", "e", "g", "a", "d"]
    assert consumer.reserve(timeout=0) is None
    consumer.close()


def test_an_urgent_task_wakes_a_blocked_consumer(transport, queue):
    consumer = transport.consumer(queue)
    assert consumer.reserve(timeout=0) is None  # registered; the queue is empty
    got: list[tuple[float, Delivery | None]] = []
    thread = threading.Thread(target=lambda: got.append((0, consumer.reserve(timeout=10))))
    thread.start()
    time.sleep(0.3)  # blocked in BLMOVE on the ready list
    sent = time.monotonic()
    tid = transport.submit_task(queue, {}, priority=7)
    thread.join(10)
    assert got and got[0][1] is not None and got[0][1].id == tid
    assert time.monotonic() - sent < 0.5
    consumer.ack(got[0][1])
    assert consumer.reserve(timeout=0) is None
    assert transport.poll_queue(queue) == 0  # the nudge is not counted, nor left behind
    consumer.close()


def test_a_delayed_or_recovered_task_keeps_its_priority(transport, queue):
    transport.submit_task(queue, {"name": "plain"})
    transport.submit_task(queue, {"name": "urgent"}, priority=3, delay=0.1)
    time.sleep(0.2)
    consumer = transport.consumer(queue)
    assert take(consumer).payload["name"] == "urgent"
    consumer.close()  # handed back at the head of its priority
    consumer = transport.consumer(queue)
    assert take(consumer).payload["name"] == "urgent"
    consumer.close()


# -- forgetting, tracking off, the generic store ---------------------------------------------


def test_final_statuses_are_forgotten_by_redis_after_the_ttl(transport, queue, client):
    transport.status_ttl = 0.5
    tid = transport.submit_task(queue, {})
    consumer = transport.consumer(queue)
    consumer.ack(take(consumer))
    consumer.close()
    assert transport.status(tid).state == "succeeded"
    time.sleep(0.7)
    assert transport.status(tid) is None
    keys = [task_key(transport, queue, tid), f"{transport.prefix}:@id:{tid}"]
    keys.append(f"{transport.prefix}:{queue}:done:{tid}")
    assert client.exists(*keys) == 0


def test_purge_deletes_the_statuses_of_purged_tasks(transport, queue):
    ids = transport.submit_tasks(queue, [{}, {}])
    ids.append(transport.submit_task(queue, {}, priority=4, unique_key="u"))
    assert transport.purge(queue) == 3
    assert transport.statuses(ids) == [None, None, None]
    assert transport.submit_task(queue, {}, unique_key="u") not in ids


def test_a_worker_without_tracking_writes_no_status(transport, queue, client):
    # as the run loop of a worker with track_status = False says when it starts
    transport.state().set_tracking(queue, False)
    consumer = transport.consumer(queue)
    consumer.tracking = False
    # a submit learns it (asynctask.untracked) and writes no status record; status()
    # still says why (the id carries the mark of an unrecorded task)
    tid = transport.submit_task(queue, {})
    assert client.exists(task_key(transport, queue, tid)) == 0
    with pytest.raises(StatusNotTracked, match="track_status"):
        transport.status(tid)
    with pytest.raises(StatusNotTracked, match="track_status"):
        transport.submit_task(queue, {}, unique_key="k")
    delivery = take(consumer)
    assert consumer.start(delivery) == "run"
    consumer.ack(delivery)
    consumer.close()
    # nothing written by the worker either
    assert client.exists(task_key(transport, queue, tid)) == 0
    assert transport.state().untracked([queue, "other"]) == {queue}
    transport.state().set_tracking(queue, True)
    assert transport.state().untracked([queue]) == set()


def test_the_generic_store_keeps_another_transports_state(transport):
    # as AMQP uses it through asynctask_state: no task of its own in this Redis
    store = transport._state_store()
    queue = unique_queue()
    a, b = "a" * 32, "b" * 32
    assert store.submitted(queue, [a], 0, SubmitOptions(unique_key="k")) == [a]
    assert store.submitted(queue, [b], 0, SubmitOptions(unique_key="k")) == [a]
    assert store.started(queue, a, 1) == "run"
    store.settled(queue, a, "retrying", 1, error="boom")
    assert store.statuses([a])[0].state == "retrying"
    assert store.started(queue, a, 2) == "run"
    store.settled(queue, a, "succeeded", 2, result_json="[1]")
    st = store.wait(a, 1)
    assert (st.state, st.attempts, st.result) == ("succeeded", 2, [1])
    assert store.submitted(queue, [b], 5, SubmitOptions(unique_key="k", expires=60)) == [b]
    assert store.statuses([b])[0].state == "delayed"
    assert store.cancel(b) is True
    assert store.started(queue, b, 1) == "cancelled"
    store.settled(queue, b, "succeeded", 1, result_json="1")
    assert store.statuses([b])[0].state == "cancelled"
    assert queue not in [s.name for s in transport.queues()]  # no task of its own here


def test_statuses_reads_many_ids_in_two_round_trips(transport, queue, monkeypatch):
    ids = transport.submit_tasks(queue, [{} for _ in range(50)])
    calls: list[object] = []
    execute = transport.execute

    def counted(fn, *args):
        calls.append(fn)
        return execute(fn, *args)

    monkeypatch.setattr(transport, "execute", counted)
    found = transport.statuses([*ids, "f" * 32])
    assert [s.state for s in found[:-1]] == ["queued"] * 50 and found[-1] is None
    # MGET of the pointers, then one pipeline; (core asks whether a queue is untracked)
    assert len(calls) <= 3, calls


def test_the_storage_is_what_the_readme_says(transport, queue, client):
    tid = transport.submit_task(queue, {}, priority=2, unique_key="x", expires=60)
    p = transport.prefix
    assert client.get(f"{p}:@id:{tid}") == queue.encode()
    fields = client.hgetall(f"{p}:{queue}:task:{tid}")
    assert fields[b"state"] == b"queued" and fields[b"unique"] == b"x"
    assert int(fields[b"expires_at"]) > time.time() * 1000
    assert client.get(f"{p}:{queue}:unique:x") == tid.encode()
    (member,) = client.zrange(f"{p}:{queue}:urgent", 0, -1)
    assert b'"asynctask-priority":"2"' in member


def test_a_cancel_between_reserve_and_start_is_seen_by_start(transport, queue):
    # Given a task the move marked running (the one the consumer hands out now)
    tid = transport.submit_task(queue, {})
    other = transport.submit_task(queue, {})
    consumer = transport.consumer(queue)
    consumer.ack(take(consumer))  # times the connection's round trip
    delivery = take(consumer)
    assert delivery.id == other or delivery.id == tid
    # When it is cancelled before the start (the consumer hears it on its cancel feed:
    # cancel returns only once Redis has written it to the subscribers)
    assert transport.cancel(delivery.id) is True
    # Then start says so, and it is gone
    assert consumer.start(delivery) == "cancelled"
    assert consumer.reserve(timeout=0) is None
    assert transport.queue_stats(queue).in_flight == 0
    consumer.close()


def _count_sends(consumer: Any, monkeypatch: Any) -> list[bytes]:
    """Every command the consumer's own connection sends from now on."""
    sent: list[bytes] = []
    conn = consumer._conn
    real_send = conn.send_packed_command

    def counting_send(command: Any, check_health: bool = True) -> None:
        sent.extend(command)
        real_send(command, check_health)

    monkeypatch.setattr(conn, "send_packed_command", counting_send)
    return sent


def test_a_task_taken_ahead_starts_without_a_message_and_reads_running_soon(
    transport, queue, monkeypatch
):
    """The running mark of a task taken ahead is neither sent nor waited for at its start
    while the cancel feed is live: a task that runs on is marked within
    ``startmarks.DEFER`` (by the consumer's thread, with the ack before it), with the time
    it started. (Fails against the consumer before this: each such start sent a START, so
    a drain cost a message a task more than without statuses.)"""
    from asynctask_redis.startmarks import DEFER

    # Given a consumer holding two tasks (prefetch 2), the first started and acked
    first, second = transport.submit_tasks(queue, [{"n": 1}, {"n": 2}])
    consumer = transport.consumer(queue, prefetch=2)
    one, two = take(consumer), take(consumer)
    assert consumer.start(one) == "run"
    consumer.ack(one)
    sent = _count_sends(consumer, monkeypatch)
    # When the second starts, and runs on
    began = time.time()
    assert consumer.start(two) == "run"
    # Then nothing went to Redis at its start
    assert sent == []
    # And Redis has it running within DEFER (and the first succeeded), started when it did
    deadline = time.monotonic() + DEFER + 1
    while transport.status(second).state != "running":
        assert time.monotonic() < deadline, "the running mark never came"
        time.sleep(0.002)
    marked_after = time.time() - began
    assert marked_after < DEFER + 0.25, marked_after
    running = transport.status(second)
    assert running.attempts == 1 and abs(running.started_at - began) < 0.1, running
    assert transport.status(first).state == "succeeded"
    assert len(sent) == 1  # one START, the thread's
    # When it is acked: then it succeeded with the next call
    consumer.ack(two)
    assert consumer.reserve(timeout=0) is None
    assert transport.status(second).state == "succeeded"
    consumer.close()


def test_a_late_running_mark_goes_out_when_the_consumer_lost_its_connection(transport, queue):
    """A failed call that lets the connection go (a cluster failover moved the queue's
    slot) leaves the consumer none until its next call: the mark thread takes a new one
    rather than leave the mark of a running task for after it ends. (Failed before: the
    thread found no connection and went idle, the task read queued while it ran.)"""
    from asynctask_redis.startmarks import DEFER

    # Given a consumer holding two tasks, the second started (its mark deferred)
    _first, second = transport.submit_tasks(queue, [{"n": 1}, {"n": 2}])
    consumer = transport.consumer(queue, prefetch=2)
    one, two = take(consumer), take(consumer)
    assert consumer.start(one) == "run"
    consumer.ack(one)
    with consumer._lock:  # as _execute does when a slot moved (between calls here)
        assert consumer.start(two) == "run"
        consumer._release_conn()
        consumer._conn = None
    # Then it reads running within DEFER all the same, while it runs on
    deadline = time.monotonic() + DEFER + 1
    while transport.status(second).state != "running":
        assert time.monotonic() < deadline, "the running mark never came"
        time.sleep(0.005)
    consumer.ack(two)
    assert consumer.reserve(timeout=0) is None
    assert transport.status(second).state == "succeeded"
    consumer.close()


def test_a_quick_task_taken_ahead_is_marked_with_its_ack_in_the_next_move(
    transport, queue, monkeypatch
):
    """A task taken ahead that ends before ``DEFER`` has its running mark and its ack in
    the consumer's next call, in that order: states in order, times in order, no message
    of its own. (Fails if the marks are sent at each start: a START a task.)"""
    # Given a consumer holding three tasks (prefetch 3), the first started and acked
    ids = transport.submit_tasks(queue, [{"n": n} for n in range(3)])
    consumer = transport.consumer(queue, prefetch=3)
    held = [take(consumer) for _ in ids]
    assert consumer.start(held[0]) == "run"
    consumer.ack(held[0])
    sent = _count_sends(consumer, monkeypatch)
    # When the other two start and end at once, and the consumer asks for more
    for delivery in held[1:]:
        assert consumer.start(delivery) == "run"
        consumer.ack(delivery)
    assert consumer.reserve(timeout=0) is None
    # Then no START went out: the next move carried all of it; each succeeded after it ran
    from asynctask_redis.scripts import START

    assert sent and all(START.sha.encode() not in command for command in sent), sent
    for tid in ids:
        st = transport.status(tid)
        assert st.state == "succeeded" and st.attempts == 1, st
        assert st.submitted_at <= st.started_at <= st.finished_at, st
    consumer.close()


def test_a_lost_cancel_feed_makes_start_ask_redis(transport, queue, client):
    """A consumer whose cancel feed was cut (a killed connection, a failover) cannot know
    what was published meanwhile: the start of a task it took before asks Redis, so a
    cancel made while the feed was down still keeps the task from running. (Fails with
    a start that trusts a feed it never re-checks: the task runs.)"""
    # Given a consumer holding two tasks, its cancel feed's connection killed
    _first, second = transport.submit_tasks(queue, [{"n": 1}, {"n": 2}])
    consumer = transport.consumer(queue, prefetch=2)
    one, two = take(consumer), take(consumer)
    feed = consumer._feed
    assert feed is not None and feed.live
    host, port = feed._conn._sock.getsockname()[:2]
    assert client.client_kill(f"{host}:{port}")
    # When the second task is cancelled while the feed is down (nobody hears it)
    assert transport.cancel(second) is True
    # Then its start asks Redis and says so, and the first still runs
    assert consumer.start(one) == "run"
    assert consumer.start(two) == "cancelled"
    consumer.ack(one)
    assert consumer.reserve(timeout=0) is None
    assert transport.status(second).state == "cancelled"
    # And the next move subscribes again
    assert consumer._feed is not None and consumer._feed.live
    consumer.close()


def test_the_mark_thread_ends_with_its_consumer(transport, queue):
    """The thread that sends late running marks ends when its consumer closes, and when
    it is dropped unclosed (no thread a consumer left behind)."""

    def marks_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("asynctask-redis-marks-")]

    before = len(marks_threads())
    transport.submit_tasks(queue, [{"n": n} for n in range(4)])
    for close in (True, False):
        # Given a consumer that started a task taken ahead (its thread now runs)
        consumer = transport.consumer(queue, prefetch=2)
        one, two = take(consumer), take(consumer)
        assert consumer.start(one) == "run"
        consumer.ack(one)
        assert consumer.start(two) == "run"
        assert len(marks_threads()) == before + 1
        consumer.ack(two)
        deadline = time.monotonic() + 5
        while transport.status(two.id).state != "succeeded":  # the thread sent it: idle now
            assert time.monotonic() < deadline, "the thread never sent the marks"
            time.sleep(0.005)
        # When it is closed, or dropped
        if close:
            consumer.close()
        del consumer, one, two
        # Then its thread ends
        deadline = time.monotonic() + 5
        while len(marks_threads()) > before:
            assert time.monotonic() < deadline, "the mark thread outlived its consumer"
            time.sleep(0.01)


def test_acks_sent_by_the_mark_thread_whose_reply_is_lost_are_sent_again(transport, queue):
    """The mark thread sends a running task's mark, with the acks before it, in a START
    whose reply is read with the consumer's next call; when the connection fails before
    that, they are pending again and go with the resynchronising call, so an acked task
    does not run twice. (Failed before: the acks were dropped with the lost reply, and
    the resync handed the acked task back to the queue.)"""
    from asynctask_redis.startmarks import DEFER

    ids = transport.submit_tasks(queue, [{"n": n} for n in range(3)])
    consumer = transport.consumer(queue, prefetch=3)
    first, second = take(consumer), take(consumer)
    assert consumer.start(first) == "run"
    consumer.ack(first)
    # When the second runs on, and the thread's START (the first's ack, the second's
    # mark) never reaches Redis...
    conn = consumer._conn
    real_send = conn.send_packed_command
    dropped: list[Any] = []
    conn.send_packed_command = lambda commands, check_health=True: dropped.extend(commands)
    assert consumer.start(second) == "run"
    deadline = time.monotonic() + DEFER + 2
    while not dropped:
        assert time.monotonic() < deadline, "the thread sent nothing"
        time.sleep(0.005)
    conn.send_packed_command = real_send
    # ...and the connection fails before its reply is read
    conn._sock.shutdown(socket.SHUT_RDWR)
    consumer.ack(second)
    got = _run_all(consumer)
    # Then only the third came (the first two were acked once, not handed back)
    assert got == [ids[2]]
    assert [transport.status(tid).state for tid in ids] == ["succeeded"] * 3


class _Quiet(AsyncTaskWorker):
    """Succeeds, or fails for good on ``{"fail": true}`` (no retries)."""

    name = "asynctask_redis_untracked_leftover"
    max_retries = 0

    def process(self, payload: Any) -> None:
        if payload.get("fail"):
            raise RuntimeError("boom")


def test_records_written_before_a_queue_went_untracked_are_forgotten(transport, queue, client):
    """Issue 16: every status record is forgotten, the ones written at submit before the
    queue's workers turned ``track_status`` off too (a worker keeping no status writes
    nothing at its settle: they stayed ``queued``, with no TTL, for good)."""
    # Given tasks submitted while the queue was tracked (their records written, no TTL)
    transport.status_ttl = 0.5
    keyed = transport.submit_task(queue, {}, unique_key="leftover")
    ids = [transport.submit_task(queue, {}), transport.submit_task(queue, {"fail": True}), keyed]
    keys = [task_key(transport, queue, i) for i in ids]
    assert [client.pttl(k) for k in keys] == [-1, -1, -1]
    # When its workers now keep no status and run them
    options = LoopOptions(max_tasks=3, track_status=False, wait=0.2)
    try:
        run_loop(_Quiet(), transport, queue, options)
        # Then status() still says the queue keeps none
        with pytest.raises(StatusNotTracked, match="track_status"):
            transport.status(ids[0])
        # And Redis forgets the records, their id pointers and the unique key after the TTL
        time.sleep(1.0)
        unique = f"{transport.prefix}:{queue}:unique:leftover"
        pointers = [f"{transport.prefix}:@id:{i}" for i in ids]
        assert client.exists(*keys, *pointers, unique) == 0
    finally:
        transport.purge_failed(queue)
        transport.state().set_tracking(queue, True)


class _Succeeds(AsyncTaskWorker):
    """Succeeds whatever the payload."""

    name = "asynctask_redis_untracked_succeeds"

    def process(self, payload: Any) -> None:
        pass


def test_a_record_requeued_from_the_failed_store_and_run_untracked_is_forgotten(
    transport, queue, client
):
    """Issue 16: a record is forgotten once a worker keeping no status settles its task
    for good, whatever was in the queue when it turned untracked (a task in the failed
    store, requeued after, was in no list the queue's walk read: its record stayed)."""
    # Given a task that failed on a tracked queue (its record kept with its failed record)
    transport.status_ttl = 0.5
    tid = transport.submit_task(queue, {"fail": True})
    run_loop(_Quiet(), transport, queue, LoopOptions(max_tasks=1, wait=0.2))
    assert transport.status(tid).state == "failed"
    key = task_key(transport, queue, tid)
    try:
        # When the queue turns untracked, then the task is requeued and run there
        transport.state().set_tracking(queue, False)
        assert transport.requeue_failed(queue) == 1
        assert client.pttl(key) == -1
        options = LoopOptions(max_tasks=1, track_status=False, wait=0.2)
        run_loop(_Succeeds(), transport, queue, options)
        # Then Redis forgets its record and its id pointer after the TTL
        assert 0 < client.pttl(key) <= 500
        time.sleep(0.7)
        assert client.exists(key, f"{transport.prefix}:@id:{tid}") == 0
    finally:
        transport.purge_failed(queue)
        transport.state().set_tracking(queue, True)


@pytest.mark.slow
def test_turning_a_big_backlog_untracked_does_not_block_redis():
    """Issue 16: ``set_tracking(queue, False)`` on a queue of 200,000 tracked tasks
    keeps no script running for more than 50 ms (one walk of the whole queue in one
    script blocked every client of the server: BUSY past 5 s). A private server: its
    slow log is ours to set."""
    with private_redis(appendonly=False) as server:
        transport = open_transport(server.uri())
        client = redis.Redis(host=server.address, port=server.port)
        try:
            # Given a backlog of 200,000 tasks submitted tracked (records with no TTL)
            queue = unique_queue()
            for _ in range(20):
                transport.submit_tasks(queue, [{}] * 10_000)
            client.config_set("slowlog-log-slower-than", 50_000)  # us
            client.slowlog_reset()
            # When its workers turn track_status off
            transport.state().set_tracking(queue, False)
            # Then no command ran 50 ms or more, and the queue is untracked
            assert [(e["command"][:40], e["duration"]) for e in client.slowlog_get(10)] == []
            assert transport.state().untracked([queue]) == {queue}
        finally:
            client.close()
            transport.close()


def test_a_held_start_mark_reaches_a_server_that_never_ran_the_start_script():
    """The mark thread sends a held running mark as an unanswered ``START`` call
    (``flush_marks``); on a server that has not loaded that script (a fresh node, one
    restarted) the reply is NOSCRIPT, read only with the consumer's next call: after the
    task. So the consumer loads it on each connection it opens. (Failed before: on a
    private Redis the second task of a move read ``queued`` through its run.)"""
    with private_redis(appendonly=False) as server:
        transport = open_transport(server.uri())
        try:
            queue = unique_queue()
            ids = transport.submit_tasks(queue, [{"n": n} for n in range(3)])
            consumer = transport.consumer(queue, prefetch=3)
            try:
                # Given the first task of a move run (its mark went with the move)
                first = take(consumer)
                assert consumer.start(first) == "run"
                # When the second starts, its mark held for the thread to send
                second = take(consumer)
                assert consumer.start(second) == "run"
                # Then it reads running while it runs, long before the consumer calls again
                deadline = time.monotonic() + 2.0
                while transport.status(second.id).state != "running":
                    assert time.monotonic() < deadline, transport.status(second.id)
                    time.sleep(0.02)
            finally:
                consumer.close()
        finally:
            transport.close()
    assert ids[0] == first.id


@pytest.mark.parametrize("store", ["filesys", "redis", "pgsql"])
def test_with_state_elsewhere_a_worker_killed_right_after_a_fail_leaves_it_failed(
    redis_uri, tmp_path, request, store
):
    """Statuses in the store of ``asynctask_state`` (a filesys folder, another Redis
    prefix, PostgreSQL): a worker killed between the move to the failed store and
    ``failed`` leaves a task that reads ``failed`` (the consumer noted its id first; the
    read finds it in the failed store's index by id). Failed before: ``running``."""
    if store == "filesys":
        state = f"filesys:{tmp_path / 'state'}"
    else:
        state = request.getfixturevalue(f"{store}_state")
    killed_after_the_fail(
        redis_uri, state, unique_queue(), "asynctask_redis.consumer:RedisConsumer"
    )
