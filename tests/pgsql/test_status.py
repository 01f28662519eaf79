"""Task status on pgsql (issue 16, DESIGN.md section 6) beyond the shared contract: what
the tables hold (checked with plain psycopg), the unique key across processes, the
indexes that serve reserve, the schema added in place, the store another transport
uses (``asynctask_state``), and a consumer that keeps no status."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest

from asynctask.runner import LoopOptions, run_loop
from asynctask.status import StatusNotTracked
from asynctask.testing import unique_queue
from asynctask.testing.contract import open_transport
from asynctask.worker import AsyncTaskWorker
from asynctask_pgsql import consumer as consumer_module
from asynctask_pgsql import state as state_module
from asynctask_pgsql.forget import FORGET_EVERY
from asynctask_pgsql.state_sql import CANCEL_HEARD
from asynctask_pgsql.statements import Statements
from clitools import run_asynctask
from slowlink import SlowLink
from support import cancel_while_running_in_process, killed_after_the_fail

from .conftest import CONNINFO, DATABASE, HOST, URI


def rows(query: str, *params: Any, conninfo: str = CONNINFO) -> list[tuple[Any, ...]]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def status_row(task_id: str, schema: str = "asynctask") -> tuple[Any, ...] | None:
    """The stored status, read past the transport."""
    found = rows(
        "SELECT state, attempts, error, result, unique_key, date_forget IS NOT NULL"
        f" FROM {schema}.asynctask_status WHERE task_id = %s::uuid",
        task_id,
    )
    return found[0] if found else None


def queue_rows(queue: str) -> list[tuple[Any, ...]]:
    return rows("SELECT task_id, state FROM asynctask.asynctask_queue WHERE queue_name = %s", queue)


def run_one(consumer: Any, result: object = None) -> Any:
    """Reserve, start and acknowledge one task; the acknowledgement is sent at once."""
    delivery = consumer.reserve(5)
    assert delivery is not None
    assert consumer.start(delivery) == "run"
    consumer.ack(delivery, None if result is None else json.dumps(result))
    consumer.reserve(0)  # sends the acknowledgement
    return delivery


def test_a_task_that_succeeds_is_queued_running_then_succeeded_with_its_result(transport):
    queue = unique_queue()
    task_id = transport.submit_task(queue, {"n": 1})
    assert transport.status(task_id).state == "queued"
    assert status_row(task_id)[0] == "queued"
    with transport.consumer(queue) as consumer:
        delivery = consumer.reserve(5)
        assert consumer.start(delivery) == "run"
        running = transport.status(task_id)
        assert (running.state, running.attempts) == ("running", 1)
        assert running.started_at is not None
        consumer.ack(delivery, json.dumps({"sum": 3}))
        consumer.reserve(0)
    done = transport.status(task_id)
    assert (done.state, done.result, done.attempts) == ("succeeded", {"sum": 3}, 1)
    assert done.finished_at >= done.started_at >= done.submitted_at
    assert status_row(task_id)[3:] == ('{"sum": 3}', None, True)  # result, key freed, TTL
    assert queue_rows(queue) == []


def test_a_delayed_task_reads_delayed_until_due(transport):
    queue = unique_queue()
    task_id = transport.submit_task(queue, {}, delay=0.5)
    assert transport.status(task_id).state == "delayed"
    time.sleep(0.6)
    assert transport.status(task_id).state == "queued"
    transport.purge(queue)
    assert transport.status(task_id) is None  # purged: its status goes with it


def test_a_retried_then_failed_task_reads_retrying_failed_and_a_requeue_queues_it(transport):
    queue = unique_queue()
    task_id = transport.submit_task(queue, {})
    with transport.consumer(queue) as consumer:
        delivery = consumer.reserve(5)
        consumer.start(delivery)
        consumer.retry(delivery, 0, "first error")
        retrying = transport.status(task_id)
        assert (retrying.state, retrying.error, retrying.attempts) == ("retrying", "first error", 1)
        delivery = consumer.reserve(5)
        assert consumer.start(delivery) == "run"
        assert transport.status(task_id).attempts == 2
        consumer.fail(delivery, "second error")
    failed = transport.status(task_id)
    assert (failed.state, failed.error, failed.attempts) == ("failed", "second error", 2)
    assert status_row(task_id)[5] is False  # kept as long as its failed record
    assert transport.requeue_failed(queue, [task_id]) == 1
    assert transport.status(task_id).state == "queued"
    with transport.consumer(queue) as consumer:
        run_one(consumer)
    assert transport.status(task_id).state == "succeeded"


def test_a_cancelled_waiting_task_never_runs_and_its_row_is_gone(transport):
    queue = unique_queue()
    task_id = transport.submit_task(queue, {}, delay=0.2)
    assert transport.cancel(task_id) is True
    assert transport.cancel(task_id) is False  # final already
    assert transport.status(task_id).state == "cancelled"
    assert queue_rows(queue) == []
    with transport.consumer(queue) as consumer:
        assert consumer.reserve(0.5) is None


@pytest.fixture
def slow_link(pg_server: None) -> Any:
    """A way to the server whose answers arrive 0.3 s late (``tests/slowlink.py``)."""
    link = SlowLink(HOST, 5432, delay=0.3)
    yield link
    link.close()


def test_a_prefetched_task_cancelled_before_its_start_is_dropped_by_start(transport, slow_link):
    """The cancel of a prefetched task wins over a start called after it returned, even
    when its announcement is still on its way: the consumer's answers come 0.3 s late,
    as a loaded machine makes them now and then. Failed (``start`` said "run", every
    time) while a prefetched start read only the notifications already received; the
    contract's ``test_a_task_cancelled_while_waiting_never_runs`` failed so 3 runs in 11
    on a machine at load 18."""
    queue = unique_queue()
    first, second = transport.submit_tasks(queue, [{"n": 1}, {"n": 2}])
    slow = open_transport(f"pgsql://{HOST}:{slow_link.port}/{DATABASE}?recovery_seconds=1")
    try:
        with slow.consumer(queue, prefetch=2) as consumer:
            # Given a consumer that has started one task and holds a second, prefetched
            one = consumer.reserve(5)
            assert one is not None and one.id == first
            assert consumer.start(one) == "run"
            two = consumer.reserve(5)  # prefetched: still waiting
            assert two is not None and two.id == second
            assert transport.status(second).state == "queued"
            # When the second is cancelled (through another connection) before its start
            assert transport.cancel(second) is True
            # Then its start drops it: it never runs
            assert consumer.start(two) == "cancelled"
            consumer.ack(one)
            assert consumer.reserve(0) is None
    finally:
        slow.close()
    after = transport.status(second)
    assert after.state == "cancelled" and after.result is None
    assert [s.state for s in transport.statuses([first, second])] == ["succeeded", "cancelled"]
    assert queue_rows(queue) == []
    assert transport.failed_tasks(queue) == []


def test_a_prefetched_task_cancelled_right_after_the_reserve_is_dropped_by_start(
    transport, monkeypatch
):
    """A consumer starts a prefetched task without asking the server when its last
    question left less than ``CANCEL_HEARD`` ago; ``cancel`` waits that long when it told
    a consumer, so a start right after it still asks and drops the task. Here the window
    is 0.5 s (both sides patched), so that the cancel surely falls in it. Failed (the
    second start said "run") with the wait taken out of ``PgsqlStateStore.cancel``."""
    quiet = 0.5
    monkeypatch.setattr(consumer_module, "CANCEL_HEARD", quiet)
    monkeypatch.setattr(state_module, "CANCEL_HEARD", quiet)
    queue = unique_queue()
    first, second = transport.submit_tasks(queue, [{"n": 1}, {"n": 2}])
    with transport.consumer(queue, prefetch=2) as consumer:
        # Given a consumer that took both tasks in one reserve and started the first at once
        one = consumer.reserve(5)
        assert one is not None and one.id == first
        assert consumer.start(one) == "run"
        two = consumer.reserve(5)
        assert two is not None and two.id == second
        # When the second is cancelled, and started as soon as the cancel returns
        began = time.monotonic()
        assert transport.cancel(second) is True
        waited = time.monotonic() - began
        # Then its start drops it: it never runs
        assert consumer.start(two) == "cancelled"
        assert waited >= quiet
        consumer.ack(one)
        assert consumer.reserve(0) is None
    assert [s.state for s in transport.statuses([first, second])] == ["succeeded", "cancelled"]
    assert queue_rows(queue) == []


def test_a_drain_of_prefetched_tasks_asks_for_cancels_once_per_quiet_window(transport):
    """Starting prefetched tasks within ``CANCEL_HEARD`` of the last question sends no
    Sync: 40 tasks reserved 8 at a time and started at once cost the 5 reserves' round
    trips and few Syncs, not one a task (40 before this change)."""
    queue = unique_queue()
    transport.submit_tasks(queue, [{"n": n} for n in range(40)])
    with transport.consumer(queue, prefetch=8) as consumer:
        syncs = []
        ask = consumer._hear_cancels

        def counted(conn: Any) -> None:
            syncs.append(1)
            ask(conn)

        consumer._hear_cancels = counted
        began = time.monotonic()
        for _ in range(40):
            delivery = consumer.reserve(5)
            assert delivery is not None
            assert consumer.start(delivery) == "run"
            consumer.ack(delivery)
        spent = time.monotonic() - began
    # at most one Sync per reserve and per CANCEL_HEARD of the time spent
    assert len(syncs) <= 5 + spent / CANCEL_HEARD
    assert len(syncs) < 40


def test_a_task_cancelled_while_it_runs_stays_cancelled_and_is_never_retried(transport):
    queue = unique_queue()
    kept, retried = transport.submit_tasks(queue, [{"n": 1}, {"n": 2}])
    with transport.consumer(queue) as consumer:
        delivery = consumer.reserve(5)
        assert consumer.start(delivery) == "run"
        assert transport.cancel(kept) is True
        consumer.ack(delivery, json.dumps("discarded"))  # the result of a cancelled task
        delivery = consumer.reserve(5)
        assert consumer.start(delivery) == "run"
        assert transport.cancel(retried) is True
        consumer.retry(delivery, 0, "raised")  # a cancelled task is not retried
        assert consumer.reserve(0.3) is None
    assert [(s.state, s.result) for s in transport.statuses([kept, retried])] == [
        ("cancelled", None),
        ("cancelled", None),
    ]
    assert queue_rows(queue) == []


def test_an_expired_task_never_runs_and_is_not_in_the_failed_store(transport):
    queue = unique_queue()
    task_id = transport.submit_task(queue, {}, expires=0.2)
    later = transport.submit_task(queue, {}, expires=60)
    time.sleep(0.3)
    assert transport.status(task_id).state == "expired"  # no worker took it
    with transport.consumer(queue) as consumer:
        delivery = run_one(consumer)
    assert delivery.id == later
    assert status_row(task_id)[0] == "expired"
    assert queue_rows(queue) == []
    assert transport.failed_tasks(queue) == []


def test_an_expiry_passing_while_prefetched_is_seen_by_start(transport):
    queue = unique_queue()
    transport.submit_task(queue, {})
    task_id = transport.submit_task(queue, {}, expires=0.3)
    with transport.consumer(queue, prefetch=2) as consumer:
        one = consumer.reserve(5)
        consumer.start(one)
        two = consumer.reserve(5)
        time.sleep(0.4)
        assert consumer.start(two) == "expired"
        consumer.ack(one)
    assert transport.status(task_id).state == "expired"
    assert queue_rows(queue) == []


def test_an_expiry_applies_only_until_the_first_start(transport):
    queue = unique_queue()
    task_id = transport.submit_task(queue, {}, expires=0.3)
    with transport.consumer(queue) as consumer:
        delivery = consumer.reserve(5)
        consumer.start(delivery)
        consumer.retry(delivery, 0.4, "again")
        time.sleep(0.5)
        run_one(consumer)
    assert transport.status(task_id).state == "succeeded"


_SUBMITTER = """
import sys, threading, time
from asynctask.api import get_transport
uri, queue, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
transport = get_transport(uri)
ids = []
def submit():
    for _ in range(10):
        ids.append(transport.submit_task(queue, {}, unique_key="only-one"))
threads = [threading.Thread(target=submit) for _ in range(10)]
transport.status("0" * 32)  # connected before the start
time.sleep(max(0.0, start - time.time()))
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(" ".join(sorted(set(ids))))
"""


def test_a_unique_key_from_two_processes_100_times_at_once_is_one_task(transport):
    queue = unique_queue()
    start = time.time() + 3
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SUBMITTER, URI, queue, str(start)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    answers = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(answers) == 1, answers  # every submit returned the one id
    [task_id] = answers
    assert [row[0].hex for row in queue_rows(queue)] == [task_id]
    with transport.consumer(queue) as consumer:
        run_one(consumer)
    again = transport.submit_task(queue, {}, unique_key="only-one")
    assert again != task_id  # the key was freed when the task was final
    assert transport.submit_task(queue, {}, unique_key="only-one") == again


def test_priorities_come_out_highest_first_and_fifo_within_one(transport):
    queue = unique_queue()
    order = [(0, "a"), (5, "b"), (9, "c"), (0, "d"), (9, "e"), (5, "f"), (0, "g")]
    for priority, name in order:
        transport.submit_task(queue, {"name": name}, priority=priority)
    taken = []
    with transport.consumer(queue, prefetch=3) as consumer:
        while (delivery := consumer.reserve(0.2)) is not None:
            consumer.start(delivery)
            taken.append(delivery.payload["name"])
            consumer.ack(delivery)
    assert taken == ["c", "e", "b", "f", "a", "d", "g"]
    assert transport.get_task(queue) is None


def test_get_task_takes_the_most_urgent_first(transport):
    queue = unique_queue()
    transport.submit_task(queue, {"n": 0})
    transport.submit_task(queue, {"n": 1}, priority=1)
    assert transport.get_task(queue) == {"n": 1}
    assert transport.get_task(queue) == {"n": 0}


def test_reserve_walks_the_partial_indexes(transport):
    # The urgent rows come from asynctask_queue_urgent, the others from
    # asynctask_queue_ready: the plan of the real statement names both.
    queue = unique_queue()
    transport.submit_tasks(queue, [{"n": n} for n in range(10)])
    transport.submit_task(queue, {}, priority=3)
    statements = Statements.for_schema("asynctask")
    for reserve, track in (
        (statements.reserve_tracked, True),
        (statements.reserve_untracked, False),
    ):
        params = {
            "queue": queue, "limit": 1, "owner": 0, "keeper": None, "owners": [0],
            "acks": [], "results": "[]", "started": [], "track": track, "ttl": 60.0,
            "floor": None,
        }  # fmt: skip
        with psycopg.connect(CONNINFO, autocommit=True) as conn:
            conn.execute("ANALYZE asynctask.asynctask_queue")
            with conn.transaction(force_rollback=True):
                # On a small table (a fresh CI database) a sequential scan is cheaper and
                # the planner rightly takes it; with it priced out, the plan shows whether
                # the partial indexes can serve the statement at all (if they could not,
                # the planner would still fall back to the sequential scan).
                conn.execute("SET LOCAL enable_seqscan = off")
                plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + reserve, params))
        assert "asynctask_queue_urgent" in plan, plan
        assert "asynctask_queue_ready" in plan, plan
        assert "Seq Scan on asynctask_queue" not in plan, plan
    assert transport.purge(queue) == 11


def test_wait_is_woken_by_the_notification_not_the_fallback_poll(transport):
    queue = unique_queue()
    transport._state_store().fallback_poll = 10.0
    task_id = transport.submit_task(queue, {})
    acked: list[float] = []

    def work() -> None:
        time.sleep(0.5)
        with transport.consumer(queue) as consumer:
            run_one(consumer, "done")
            acked.append(time.monotonic())

    worker = threading.Thread(target=work)
    worker.start()
    try:
        found = transport.wait(task_id, timeout=8)
        woke = time.monotonic()
    finally:
        worker.join()
    assert (found.state, found.result) == ("succeeded", "done")
    assert woke - acked[0] < 1.0
    with pytest.raises(TimeoutError):
        transport.wait(transport.submit_task(queue, {}), timeout=0.3)
    transport.purge(queue)


def test_a_final_status_is_forgotten_after_the_ttl_by_the_sweep(own_schema):
    """In a schema of its own: in the shared one any other test's status write or read
    deletes rows past their TTL (``forget``), this one's included, before the sweep."""
    transport = open_transport(f"{URI}&schema={own_schema}")
    try:
        queue = unique_queue()
        transport.status_ttl = 0.5
        task_id = transport.submit_task(queue, {})
        with transport.consumer(queue) as consumer:
            run_one(consumer)
        assert transport.status(task_id).state == "succeeded"
        time.sleep(0.6)
        # (past its time and still stored: no write of this transport's store since; one
        # now would delete it, see test_statuses_kept_for_another_transport_...)
        assert status_row(task_id, own_schema) is not None
        with transport.consumer(queue) as consumer:
            consumer.reserve(0.1)  # its first reserve sweeps
        assert status_row(task_id, own_schema) is None  # deleted by the sweep
        assert transport.status(task_id) is None
    finally:
        transport.close()


@pytest.fixture
def own_schema(pg_server: None) -> Any:
    """A schema of this test's own (its status table holds this test's rows only)."""
    name = f"asynctask_t_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(CONNINFO, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def test_statuses_kept_for_another_transport_are_deleted_after_the_ttl(own_schema):
    """The status store deletes final statuses past their TTL itself, with no pgsql
    consumer on the schema (AMQP's case: ``asynctask_state`` naming pgsql). Failed
    before: only a pgsql consumer's sweep deleted them, so the rows stayed (reads hid
    them)."""
    # Given a transport whose statuses live in pgsql, a 1 s TTL, and final statuses
    other = open_transport("localmem:" + unique_queue("q"))
    other.state_uri = f"{URI}&schema={own_schema}"
    other.status_ttl = 1.0
    queue = unique_queue()
    try:
        done, *doomed = other.submit_tasks(queue, [{"n": n} for n in range(3)])
        with other.consumer(queue) as consumer:
            delivery = consumer.reserve(timeout=5)
            assert delivery is not None and delivery.id == done
            assert consumer.start(delivery) == "run"
            consumer.ack(delivery)
            consumer.record_outcome(delivery, "succeeded")
        assert all(other.cancel(task_id) for task_id in doomed)
        table = f"{own_schema}.asynctask_status"
        assert rows(f"SELECT count(*) FROM {table}") == [(3,)]
        # When their TTL has passed: reads hide them and delete nothing (a read-only
        # session may read, test_status_reads_write_nothing_...)
        time.sleep(1.5)
        assert other.statuses([done, *doomed]) == [None] * 3
        assert rows(f"SELECT count(*) FROM {table}") == [(3,)]
        # When the store writes again (a submit will do)
        fresh = other.submit_task(queue, {"n": 3})
        # Then their rows are gone from the table, not only hidden: the new one is left
        assert rows(f"SELECT replace(task_id::text, '-', '') FROM {table}") == [(fresh,)]
    finally:
        other.close()


def test_status_reads_write_nothing_so_a_read_only_session_can_read(own_schema):
    """``status``, ``wait`` of a final task and ``asynctask task`` only read: in a
    session that cannot write (``default_transaction_read_only``, as on a hot standby or
    for a role with SELECT only) they answer, still hiding a status past its TTL, whose
    row stays for a writer to delete. Failed before: the store's first call deleted
    rows past their TTL (``forget``), "cannot execute DELETE in a read-only
    transaction"."""
    # Given, in a schema of its own, a final status, one past its TTL, one queued
    uri = f"{URI}&schema={own_schema}"
    queue = unique_queue()
    ran: list[str] = []
    with open_transport(uri) as writer:
        for ttl in (600.0, 0.5):
            writer.status_ttl = ttl
            writer.submit_task(queue, {})
            with writer.consumer(queue) as consumer:
                ran.append(run_one(consumer).id)
        waiting = writer.submit_task(queue, {})
    done, gone = ran
    time.sleep(0.6)  # ``gone`` is past its TTL (after the consumers' sweeps)
    table = f"{own_schema}.asynctask_status"
    assert rows(f"SELECT count(*) FROM {table}") == [(3,)]
    # When a transport whose every session is read-only reads them
    read_only = f"{uri}&options=-c%20default_transaction_read_only%3Don"
    with open_transport(read_only) as reader:
        found = reader.statuses([gone, done, waiting])
        waited = reader.wait(done, timeout=5)
    shown = run_asynctask("task", done, "--json", uri=read_only)
    # Then each read answers, the status past its TTL hidden, and nothing is deleted
    assert found[0] is None
    assert [s.state for s in found[1:]] == ["succeeded", "queued"]
    assert waited.state == "succeeded"
    assert shown.code == 0, shown.err
    assert json.loads(shown.out)["state"] == "succeeded"
    assert rows(f"SELECT count(*) FROM {table}") == [(3,)]
    # And a wait that listens (a task not final; it marks the row watched) deletes nothing
    with open_transport(uri) as reader, pytest.raises(TimeoutError):
        reader.wait(waiting, timeout=0.2)
    assert rows(f"SELECT count(*) FROM {table}") == [(3,)]


def test_a_drain_deletes_forgotten_statuses_as_fast_as_it_finishes_tasks(own_schema):
    """A consumer deletes statuses past their time in step with the tasks it finishes
    (``asynctask_pgsql.forget``), not only at its sweep (1,000 a sweep). Failed before:
    with a sweep every 200 s, all 3,000 stayed."""
    # Given 3,000 tasks whose statuses may be forgotten as soon as they are final
    uri = f"pgsql://{HOST}/{DATABASE}?recovery_seconds=600&schema={own_schema}"
    with open_transport(uri) as transport:
        transport.status_ttl = 0.001
        queue = unique_queue()
        for _ in range(6):
            transport.submit_tasks(queue, [{}] * 500)
        # When one consumer drains them
        with transport.consumer(queue, prefetch=16) as consumer:
            while (delivery := consumer.reserve(timeout=0.5)) is not None:
                assert consumer.start(delivery) == "run"
                consumer.ack(delivery)
        # Then at most the tasks since its last delete are left
        [(left,)] = rows(f"SELECT count(*) FROM {own_schema}.asynctask_status")
        assert left <= FORGET_EVERY, f"{left} of 3,000 statuses left"


def test_the_status_tables_are_added_in_place_to_an_existing_schema(fresh_database):
    conninfo = f"host={HOST} dbname={fresh_database}"
    uri = f"pgsql://{HOST}/{fresh_database}"
    first = open_transport(uri)
    old_id = first.submit_task("old_tasks", {"n": 1})
    first.close()
    # Back to the schema of the release before task status, with its task in it.
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            "DROP TABLE asynctask.asynctask_status, asynctask.asynctask_untracked;"
            "DROP INDEX asynctask.asynctask_queue_urgent;"
            "ALTER TABLE asynctask.asynctask_queue DROP COLUMN priority,"
            " DROP COLUMN date_expires"
        )
    transport = open_transport(uri)
    try:
        new_id = transport.submit_task("old_tasks", {"n": 2}, priority=1)
        assert transport.schema_action == "current" or transport.schema_action is not None
        assert transport.status(old_id) is None  # submitted before: no status
        assert transport.status(new_id).state == "queued"
        assert transport.get_task("old_tasks") == {"n": 2}
        assert transport.get_task("old_tasks") == {"n": 1}
        comment = rows("SELECT obj_description('asynctask'::regnamespace)", conninfo=conninfo)
        assert comment == [("version: 2",)]
    finally:
        transport.close()


def test_another_transport_keeps_its_statuses_here(transport):
    # What AMQP does with asynctask_state = this URI: the generic calls, for tasks that
    # are not in this database's queue table.
    from asynctask.status import SubmitOptions

    store = transport._state_store()
    a, b, c, d, e = (uuid.uuid4().hex for _ in range(5))
    store.fallback_poll = 10.0
    queue = unique_queue()
    assert store.submitted(queue, [a], 0, SubmitOptions(unique_key="k")) == [a]
    assert store.submitted(queue, [b], 0, SubmitOptions(unique_key="k")) == [a]
    assert store.submitted(queue, [c], 5, SubmitOptions(expires=0.2)) == [c]
    assert [s.state for s in store.statuses([a, c, d])[:2]] == ["queued", "delayed"]
    assert store.statuses([d]) == [None]
    assert store.started(queue, a, 1) == "run"
    threading.Timer(0.3, store.settled, (queue, a, "succeeded", 1), {"result_json": "7"}).start()
    started = time.monotonic()
    assert store.wait(a, 5).result == 7
    assert time.monotonic() - started < 1.3
    assert store.submitted(queue, [e], 0, SubmitOptions(unique_key="k")) == [e]
    time.sleep(0.3)
    assert store.started(queue, c, 1) == "expired"
    assert store.cancel(e) is True
    assert store.started(queue, e, 1) == "cancelled"
    store.settled(queue, e, "succeeded", 1, result_json="1")  # never over cancelled
    assert store.statuses([e])[0].state == "cancelled"


def test_a_consumer_that_keeps_no_status_writes_none_but_frees_the_unique_key(transport):
    queue = unique_queue()
    store = transport._state_store()
    store.set_tracking(queue, False)
    try:
        assert store.untracked([queue, "other_queue"]) == {queue}
        plain = transport.submit_task(queue, {})
        keyed = transport.submit_task(queue, {}, unique_key="k")
        assert status_row(plain) is None  # an untracked queue's plain submit: no record
        assert status_row(keyed)[0] == "queued"  # a key is held
        with transport.consumer(queue, prefetch=2) as consumer:
            consumer.tracking = False
            for _ in range(2):
                delivery = consumer.reserve(5)
                assert consumer.start(delivery) == "run"
                consumer.ack(delivery, json.dumps("ignored"))
            consumer.reserve(0)
        assert status_row(keyed)[:1] + status_row(keyed)[4:5] == ("queued", None)  # key freed
        assert transport.submit_task(queue, {}, unique_key="k") != keyed
        with pytest.raises(StatusNotTracked, match="track_status"):
            transport.status(plain)
    finally:
        store.set_tracking(queue, True)
        transport.purge(queue)
    assert store.untracked([queue]) == set()


def test_a_prefetched_task_reads_running_soon_and_a_short_one_keeps_its_start(transport):
    # With prefetch above 1, running is written once a task has run 50 ms (a short one
    # goes straight to succeeded, with its start time and attempt).
    queue = unique_queue()
    long, short = transport.submit_tasks(queue, [{"n": 1}, {"n": 2}])
    with transport.consumer(queue, prefetch=2) as consumer:
        delivery = consumer.reserve(5)
        began = time.time()
        assert consumer.start(delivery) == "run"
        deadline = time.monotonic() + 2
        while transport.status(long).state != "running" and time.monotonic() < deadline:
            time.sleep(0.01)
        running = transport.status(long)
        assert running.state == "running" and running.attempts == 1
        assert abs(running.started_at - began) < 0.5
        consumer.ack(delivery)
        delivery = consumer.reserve(5)
        began = time.time()
        assert consumer.start(delivery) == "run"
        consumer.ack(delivery, "2")
        consumer.reserve(0)
    done = transport.status(short)
    assert (done.state, done.result, done.attempts) == ("succeeded", 2, 1)
    assert abs(done.started_at - began) < 0.5 and done.finished_at >= done.started_at
    assert transport.status(long).state == "succeeded"


def test_the_running_marks_of_prefetched_tasks_started_together_are_one_statement(transport):
    """Prefetched tasks still running ``SYNC_WITHIN`` after their start read ``running``,
    each with its own attempt and start, written by one statement (one command id in
    their transaction). Failed before: one statement a task (8 command ids here): one
    child of 100 slots of 50 ms sleeps sent about 90 of them a wave (one status UPDATE
    each, the statement's own cost each), and the next start's bare Sync waited for all
    their answers."""
    # Given 8 prefetched tasks started together
    queue = unique_queue()
    ids = transport.submit_tasks(queue, [{"n": n} for n in range(8)])
    with transport.consumer(queue, prefetch=8) as consumer:
        deliveries = [consumer.reserve(5) for _ in range(8)]
        began = time.time()
        for delivery in deliveries:
            assert delivery is not None and consumer.start(delivery) == "run"
        ended = time.time()
        # When they run past SYNC_WITHIN
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(
            transport.status(task_id).state != "running" for task_id in ids
        ):
            time.sleep(0.02)
        # Then each reads running, attempt 1, its start between the first and last start
        for task_id in ids:
            status = transport.status(task_id)
            assert (status.state, status.attempts) == ("running", 1)
            assert status.started_at is not None
            assert began - 0.001 <= status.started_at <= ended + 0.001
        # And one statement wrote them all
        with psycopg.connect(CONNINFO) as conn:
            commands = conn.execute(
                "SELECT DISTINCT cmin::text FROM asynctask.asynctask_status"
                " WHERE task_id = ANY(%s::uuid[])",
                (ids,),
            ).fetchall()
        assert len(commands) == 1, commands
        for delivery in deliveries:
            assert delivery is not None
            consumer.ack(delivery)
        assert consumer.reserve(0) is None
    assert {transport.status(task_id).state for task_id in ids} == {"succeeded"}


def test_acknowledgements_in_one_reserve_keep_each_result_and_start(transport):
    # Given prefetched tasks whose results need quoting in any array literal (quotes,
    # backslashes, braces, commas, a NULL look-alike, unicode) or are None
    results = ['"a,b"', '"\\\\ {x}"', '"NULL"', '{"k": ["\u00e9", null]}', None, "7"]
    queue = unique_queue()
    ids = transport.submit_tasks(queue, [{"n": n} for n in range(len(results))])
    starts: list[tuple[float, float]] = []
    with transport.consumer(queue, prefetch=len(results)) as consumer:
        # When each is started (10 ms apart) and acknowledged at once, before its
        # running mark, and the acknowledgements all ride on the next statement
        for result in results:
            delivery = consumer.reserve(5)
            time.sleep(0.01)
            before = time.time()
            assert consumer.start(delivery) == "run"
            starts.append((before, time.time()))
            consumer.ack(delivery, result)
        assert consumer.reserve(0) is None
    # Then each status holds its own result and its own start
    for task_id, result, (before, after) in zip(ids, results, starts, strict=True):
        done = transport.status(task_id)
        assert done.state == "succeeded"
        assert done.result == (None if result is None else json.loads(result))
        assert done.started_at is not None
        assert before - 0.001 <= done.started_at <= after + 0.001


class _Quiet(AsyncTaskWorker):
    """Succeeds, or fails for good on ``{"fail": true}`` (no retries)."""

    name = "asynctask_pgsql_untracked_leftover"
    max_retries = 0

    def process(self, payload):
        if payload.get("fail"):
            raise RuntimeError("boom")


def test_records_written_before_a_queue_went_untracked_are_forgotten(pg_server):
    """Issue 16: every status row is forgotten, the ones written at submit before the
    queue's workers turned ``track_status`` off too: a worker keeping no status gives
    them ``date_forget`` at its settle (their state kept: ``status`` still says the
    queue keeps none). Failed before: both rows still ``queued`` after the TTL, with no
    ``date_forget``, for good."""
    with open_transport(URI) as t:
        # Given tasks submitted while the queue was tracked (their rows written)
        t.status_ttl = 0.5
        store = t.state()
        queue = unique_queue("flipped")
        ids = [t.submit_task(queue, {}), t.submit_task(queue, {"fail": True})]
        # When its workers now keep no status and run them
        run_loop(_Quiet(), t, queue, LoopOptions(max_tasks=2, track_status=False, wait=0.2))
        # Then status() still says the queue keeps none
        with pytest.raises(StatusNotTracked, match="track_status"):
            t.status(ids[0])
        # And the store reads nothing for them after the TTL (the sweep deletes them)
        time.sleep(1.0)
        try:
            assert store.statuses(ids) == [None, None]
        finally:
            t.purge_failed(queue)
            store.set_tracking(queue, True)


def _loops(plan: dict[str, Any]) -> list[tuple[str, int]]:
    """(node, actual loops) of every CTE scan in an ``EXPLAIN (ANALYZE, FORMAT JSON)`` plan."""
    found = []
    if plan.get("Node Type") == "CTE Scan":
        found.append((plan.get("CTE Name", "?"), plan["Actual Loops"]))
    for child in plan.get("Plans", []):
        found += _loops(child)
    return found


def test_a_purge_reads_what_it_deleted_once(transport):
    """A purge's statement scans the rows it deleted once, however many: failed before
    with ``SELECT count(*) FROM gone, (SELECT count(*) FROM forgot)``, which the planner
    (expecting one row from ``gone``) ran as a nested loop rescanning ``forgot`` per
    deleted row: 1,000,000 waiting tasks took over ten minutes to purge (make bench's
    scale step, 2026-12-07). Counted by the plan's loops, not timed."""
    queue = unique_queue()
    transport.submit_tasks(queue, [{"n": n} for n in range(50)])
    statements = Statements.for_schema("asynctask")
    with psycopg.connect(CONNINFO, autocommit=True) as conn:
        with conn.transaction(force_rollback=True):
            [(plan,)] = conn.execute(
                "EXPLAIN (ANALYZE, FORMAT JSON) " + statements.purge, (queue,)
            ).fetchall()
        with conn.transaction(force_rollback=True):
            [(failed_plan,)] = conn.execute(
                "EXPLAIN (ANALYZE, FORMAT JSON) " + statements.purge_failed,
                {"queue": queue, "all": True, "ids": []},
            ).fetchall()
    for found in (plan, failed_plan):
        loops = _loops(found[0]["Plan"])
        assert loops and all(n <= 1 for _, n in loops), loops
    assert transport.purge(queue) == 50


@pytest.mark.parametrize("prefetch", [1, 4])
def test_a_task_cancelled_while_it_runs_logs_its_result_discarded(transport, caplog, prefetch):
    """The ack of a task whose cancel the consumer heard (its notification read without
    waiting) says so, and the run loop logs it. Failed before: the ack returned None (the
    row's deletion rides on the next statement), no line."""
    cancel_while_running_in_process(transport, unique_queue(), caplog, prefetch)


@pytest.mark.parametrize("store", ["filesys", "redis"])
def test_with_state_elsewhere_a_worker_killed_right_after_a_fail_leaves_it_failed(
    pg_server, tmp_path, request, store
):
    """Statuses in the store of ``asynctask_state`` (a filesys folder, Redis): a worker
    killed between the move to the failed store and ``failed`` leaves a task that reads
    ``failed`` (the consumer noted its id first; the read finds its row, state
    ``failed``, by the task_id index). Failed before: ``running``."""
    if store == "filesys":
        state = f"filesys:{tmp_path / 'state'}"
    else:
        state = request.getfixturevalue(f"{store}_state")
    killed_after_the_fail(URI, state, unique_queue(), "asynctask_pgsql.consumer:PgsqlConsumer")
