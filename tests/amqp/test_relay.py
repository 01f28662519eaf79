"""The relay: a worker's AMQP connection lives in a helper process of its own, so a task
that holds the GIL, or a worker that freezes, cannot make the broker drop the connection
and give the task to a rival; a worker that dies still has its tasks back at once; a
connection closed by an operator duplicates at most the tasks in flight."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from asynctask.testing import unique_queue
from asynctask.testing.contract import open_transport
from support import events, wait_for
from tests.amqp.conftest import rabbitmqctl, vhost_of


def connections_named(prefix: str, vhost: str) -> list[str]:
    """The broker's ids (Erlang pids) of the connections of ``vhost`` whose client-provided
    name starts with ``prefix``: ours only, found by the name our process gave them."""
    listed = rabbitmqctl(
        "list_connections", "-q", "--no-table-headers", "pid", "vhost", "client_properties"
    )
    marker = '{"connection_name","' + prefix
    return [
        line.split("\t")[0]
        for line in listed.splitlines()
        if line.count("\t") >= 2 and line.split("\t")[1] == vhost and marker in line
    ]


def test_a_task_holding_the_gil_runs_once_while_a_rival_waits(amqp_uri, ledger, start_workers):
    # Given two children on one queue, heartbeat=1 (recovery bound 3 s), and a task that
    # holds the GIL in C for 9 s (3x the bound) in a worker with max_retries=2
    uri = f"{amqp_uri}?heartbeat=1"
    queue = unique_queue("gil")
    transport = open_transport(uri)
    transport.submit_task(queue, {"ledger": str(ledger), "seconds": 9})
    workers = start_workers(uri, {queue: {"worker": "test_gil_hog", "concurrency": 2}})
    [started] = wait_for(lambda: events(ledger, "start"), 40, "the task to start")
    name = f"asynctask consumer {queue} (pid {started['pid']} "
    [connection] = connections_named(name, vhost_of(uri))
    # When the task runs to its end
    wait_for(lambda: events(ledger, "done"), 40, "the task to finish")
    # Then nothing of ours closed its child's connection meanwhile: the same one is open
    assert connections_named(name, vhost_of(uri)) == [connection]
    time.sleep(1.0)  # a settle that failed would show as a redelivery by now
    workers.signal(signal.SIGTERM)
    assert workers.wait(30) == 0, workers.output()
    # And it started exactly once, and is neither waiting nor failed
    assert len(events(ledger, "start")) == 1, events(ledger, "start")
    stats = transport.queue_stats(queue)
    assert (stats.ready, stats.retrying, stats.failed) == (0, 0, 0)
    transport.close()


def test_a_frozen_worker_keeps_its_task_and_a_dead_one_gives_it_back_at_once(
    amqp_uri, ledger, start_workers
):
    # Given a child running a long task, and a rival child on the same queue
    uri = f"{amqp_uri}?heartbeat=1"
    queue = unique_queue("frozen")
    transport = open_transport(uri)
    transport.submit_task(queue, {"ledger": str(ledger), "seconds": 30})
    workers = start_workers(uri, {queue: {"worker": "test_slow", "concurrency": 2}})
    [started] = wait_for(lambda: events(ledger, "start"), 60, "the task to start")
    # When that child is frozen (SIGSTOP) for 3x the recovery bound
    os.kill(started["pid"], signal.SIGSTOP)
    time.sleep(9)
    # Then nobody else started the task
    assert len(events(ledger, "start")) == 1
    # When it is killed instead
    os.kill(started["pid"], signal.SIGKILL)
    killed = time.monotonic()
    # Then the rival starts it at once (the relay saw its worker die and closed the connection)
    wait_for(lambda: len(events(ledger, "start")) == 2, 10, "the task to come back")
    assert time.monotonic() - killed < 2.0
    second = events(ledger, "start")[1]
    assert second["pid"] != started["pid"]
    workers.signal(signal.SIGKILL)
    transport.close()


def test_an_operator_closing_a_workers_connection_duplicates_only_the_task_in_flight(
    amqp_uri, ledger, start_workers
):
    # Given one child working through 12 tasks of 0.3 s each
    uri = f"{amqp_uri}?heartbeat=1"
    queue = unique_queue("closed")
    transport = open_transport(uri)
    transport.submit_tasks(
        queue, [{"ledger": str(ledger), "n": n, "seconds": 0.3} for n in range(12)]
    )
    workers = start_workers(uri, {queue: "test_record"}, "--halt-when-empty")
    wait_for(lambda: len(events(ledger, "done")) >= 3, 60, "three tasks done")
    # When an operator closes that worker's connection (ours, found by its name)
    name = f"asynctask consumer {queue} "
    [connection] = wait_for(lambda: connections_named(name, vhost_of(uri)), 10, "its connection")
    rabbitmqctl("close_connection", connection, "test: an operator closes it")
    # Then every task is done, and only the one in flight may have started twice
    assert workers.wait(90) == 0, workers.output()
    done = [e["payload"]["n"] for e in events(ledger, "done")]
    assert sorted(set(done)) == list(range(12))
    assert len(events(ledger, "start")) <= 13
    transport.close()


HOLD_ONE = """
import sys, time
from asynctask.testing.contract import open_transport
consumer = open_transport(sys.argv[1]).consumer(sys.argv[2], prefetch=3)
delivery = consumer.reserve(timeout=20)
print(delivery.payload["n"], flush=True)
time.sleep(120)
"""


def test_a_dead_workers_unreserved_prefetch_comes_back_uncounted(amqp_uri):
    # Given a worker process whose consumer has 3 tasks prefetched and reserved the first
    uri = f"{amqp_uri}?heartbeat=1"
    queue = unique_queue("prefetched")
    transport = open_transport(uri)
    transport.submit_tasks(queue, [{"n": n} for n in range(3)])
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_ONE, uri, queue], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "0"
        # When it is killed
        child.kill()
        child.wait(10)
        # Then the task it had reserved comes back as a second attempt, the two it never
        # reserved as first attempts, none lost
        with transport.consumer(queue, prefetch=3) as consumer:
            taken = []
            while len(taken) < 3 and (delivery := consumer.reserve(timeout=10)) is not None:
                taken.append((delivery.payload["n"], delivery.attempt))
                consumer.ack(delivery)
        assert sorted(taken) == [(0, 2), (1, 1), (2, 1)]
    finally:
        child.kill()
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
        transport.close()


@pytest.mark.parametrize("settle", ["ack", "retry", "fail", "release", "close"])
def test_every_settle_call_survives_a_reconnect(amqp_uri, settle):
    """A settle call on a task whose connection an operator closed (the broker took the
    task back, redelivered) still does what it says, on a new connection: ``ack`` and
    ``fail`` end it, ``retry`` counts the attempt, ``release`` does not; only ``close``
    (not a settle call) leaves it to come back counted. Failed against the transport as
    it was (a settle after a lost connection did nothing): the acked and the failed tasks
    came back as second attempts, the released one too (3 of the 5 cases failed)."""
    # Given a consumer holding a task
    uri = f"{amqp_uri}?heartbeat=1"
    queue = unique_queue("resettle")
    transport = open_transport(uri)
    transport.submit_task(queue, {"n": 1})
    consumer = transport.consumer(queue)
    delivery = consumer.reserve(timeout=10)
    assert delivery is not None and delivery.attempt == 1
    # When an operator closes its connection, and then the worker settles the task
    [connection] = connections_named(f"asynctask consumer {queue} ", vhost_of(uri))
    rabbitmqctl("close_connection", connection, "test: settle after a reconnect")
    # (while the task runs: the relay's heartbeat thread reads the broker's close within
    # a quarter heartbeat; an ack written in the very instant the broker closes is lost
    # with the connection, and the task runs again, as the package README says)
    time.sleep(1.5)
    if settle == "retry":
        consumer.retry(delivery, 1.0, "ValueError: boom")
        assert transport.queue_stats(queue).retrying == 1  # on the ladder, not back at once
    elif settle == "fail":
        consumer.fail(delivery, "ValueError: boom")
    elif settle == "close":
        consumer.close()
    else:
        getattr(consumer, settle)(delivery)
    # Then nothing raised, nothing is lost, and the settle did what it says
    if consumer.closed:
        consumer = transport.consumer(queue)
    again = consumer.reserve(timeout=5 if settle in ("ack", "fail") else 15)
    if settle in ("ack", "fail"):
        assert again is None, f"{settle}: the task came back as attempt {again.attempt}"
    else:
        expected = 1 if settle == "release" else 2
        assert again is not None and again.id == delivery.id and again.attempt == expected
        consumer.ack(again)
    consumer.close()
    stats = transport.queue_stats(queue)
    failed = 1 if settle == "fail" else 0
    assert (stats.ready, stats.retrying, stats.failed) == (0, 0, failed)
    transport.close()


#: the prefetch of each child in the test below: the bound of what one close may repeat
PREFETCH = 4


def test_a_connection_closed_by_the_broker_repeats_at_most_its_tasks_in_flight(
    amqp_uri, ledger, start_workers
):
    """Issue 12's figure for AMQP: a connection the broker or an operator closes is a
    fault like a restart (the broker hands its unacknowledged tasks to other consumers at
    once, whoever closed it, so a live worker's task may run twice there): only the tasks
    in flight on that connection may repeat, at most its prefetch; none is lost; the
    worker reconnects by itself and goes on. The tasks its relay holds ahead, not taken
    yet, are skipped (the broker delivers them again), so only the task the child was
    running when the connection closed may run twice here."""
    # Given two children on one queue, prefetch 4 each, working through 12 tasks of 3 s
    uri = f"{amqp_uri}?heartbeat=1"
    queue = unique_queue("inflight")
    vhost = vhost_of(uri)
    transport = open_transport(uri)
    count = 12
    transport.submit_tasks(
        queue, [{"ledger": str(ledger), "n": n, "seconds": 3} for n in range(count)]
    )
    workers = start_workers(
        uri, {queue: {"worker": "test_slow", "concurrency": 2, "prefetch": PREFETCH}}
    )
    [first, *_] = wait_for(lambda: events(ledger, "start"), 60, "a task to start")
    child = first["pid"]
    name = f"asynctask consumer {queue} (pid {child} "
    [connection] = wait_for(lambda: connections_named(name, vhost), 10, "its connection")

    def started_by_child() -> list[int]:
        return [e["payload"]["n"] for e in events(ledger, "start") if e["pid"] == child]

    # (its second task just started: one acked, one running, the rest held ahead)
    wait_for(lambda: len(started_by_child()) >= 2, 30, "the child's second task")
    # When the broker closes that child's connection (ours only, found by its name), as
    # an operator's rabbitmqctl close_connection does
    before = time.time()
    rabbitmqctl("close_connection", connection, "test: the broker closes one connection")
    after = time.time()
    # Then its relay reconnects by itself (a new connection of the same name) and the
    # same child goes on: it starts tasks after the close
    wait_for(
        lambda: [c for c in connections_named(name, vhost) if c != connection],
        30,
        "the relay to reconnect",
    )
    wait_for(
        lambda: any(e["pid"] == child and e["time"] > after + 1 for e in events(ledger, "start")),
        60,
        "the child to take a task after the close",
    )
    # And every task finishes: none is lost
    wait_for(
        lambda: {e["payload"]["n"] for e in events(ledger, "done")} == set(range(count)),
        120,
        "every task done",
    )
    time.sleep(1.0)  # a task handed back late would start again by now
    workers.signal(signal.SIGTERM)
    assert workers.wait(30) == 0, workers.output()
    # And only tasks in flight on that connection when it closed ran twice: the child
    # had started them before the close (give its relay a second, at heartbeat=1, to
    # read the broker's close) and not finished them before it; at most its prefetch
    starts = events(ledger, "start")
    finished_before = {
        e["payload"]["n"]
        for e in events(ledger, "done")
        if e["pid"] == child and e["time"] < before
    }
    in_flight = {
        e["payload"]["n"] for e in starts if e["pid"] == child and e["time"] < after + 1.0
    } - finished_before
    runs = Counter(e["payload"]["n"] for e in starts)
    twice = sorted(n for n, k in runs.items() if k > 1)
    runs_by = [(e["payload"]["n"], e["pid"], round(e["time"] - after, 1)) for e in starts]
    assert set(twice) <= in_flight, f"ran twice: {twice}; in flight: {in_flight}; {runs_by}"
    assert sum(runs.values()) - count <= PREFETCH, runs_by
    stats = transport.queue_stats(queue)
    assert (stats.ready, stats.retrying, stats.failed) == (0, 0, 0)
    transport.close()


def test_tasks_handed_over_ahead_are_skipped_once_their_connection_is_lost(amqp_uri):
    """The relay hands a worker's consumer the tasks it received ahead, tagged with their
    connection's generation; one whose connection is lost before the worker takes it is
    back in the queue, for any consumer, and must not run from the hand-over too. Failed
    with the check of the shared generation word removed: tasks 1 and 2 ran from the
    stale hand-over (attempt 1) and again at the rival (attempt 2)."""
    # Given a consumer that took the first of 3 tasks, the other two handed over ahead,
    # and a rival waiting on the queue
    uri = f"{amqp_uri}?heartbeat=1"
    queue = unique_queue("ahead")
    transport = open_transport(uri)
    consumer = transport.consumer(queue, prefetch=3)
    assert consumer.reserve(timeout=0.3) is None  # subscribed
    transport.submit_tasks(queue, [{"n": n} for n in range(3)])
    time.sleep(0.5)  # all three reach the relay before it is asked
    first = consumer.reserve(timeout=10)
    assert first is not None and first.payload == {"n": 0}
    assert [d.payload["n"] for _, d in consumer._ahead] == [1, 2]
    generation = consumer._words.generation
    [connection] = connections_named(f"asynctask consumer {queue} ", vhost_of(uri))
    rival = transport.consumer(queue, prefetch=3)
    assert rival.reserve(timeout=0.3) is None  # subscribed
    try:
        # When an operator closes the first one's connection, and its relay sees it
        rabbitmqctl("close_connection", connection, "test: tasks handed over ahead")
        wait_for(lambda: consumer._words.generation != generation, 10, "the relay to see it")
        consumer.ack(first)
        # Then tasks 1 and 2 run once each, wherever: their redelivery, counted (task 0
        # was in flight: the rival may run it again before the late ack's marker is left)
        runs = []
        idle = 0
        while idle < 4 and len(runs) < 6:
            for each in (consumer, rival):
                delivery = each.reserve(timeout=1)
                idle = 0 if delivery is not None else idle + 1
                if delivery is not None:
                    runs.append((delivery.payload["n"], delivery.attempt))
                    each.ack(delivery)
        assert sorted(run for run in runs if run[0] != 0) == [(1, 2), (2, 2)], runs
    finally:
        consumer.close()
        rival.close()
    stats = transport.queue_stats(queue)
    assert (stats.ready, stats.retrying, stats.failed) == (0, 0, 0)
    transport.close()


def test_a_release_after_a_lost_connection_hands_back_the_tasks_behind_it(amqp_uri):
    """``release(delivery, behind)`` of a task whose connection was lost, with tasks
    behind it received on the new connection (a relay reads ahead while its worker
    runs): those go back to the queue too. Failed before: the release went the lost
    connection's way (a marker) and left them held, unseen by anyone, until the consumer
    closed (a relay's worker then waited out its reserve with nothing)."""
    # Given a consumer (in this process) holding task 0, whose connection is then closed
    uri = f"{amqp_uri}?heartbeat=1&relay=false"
    queue = unique_queue("behind")
    transport = open_transport(uri)
    transport.submit_task(queue, {"n": 0})
    consumer = transport.consumer(queue, prefetch=2)
    first = consumer.reserve(timeout=10)
    assert first is not None and first.payload == {"n": 0}
    [connection] = connections_named(f"asynctask consumer {queue} ", vhost_of(uri))
    rabbitmqctl("close_connection", connection, "test: release behind")
    time.sleep(1.5)  # (the heartbeat thread reads the close)
    # and the tasks it took on its new connection, as a relay reads ahead (task 1, and
    # task 0's redelivery, counted: a copy at the tail)
    transport.submit_task(queue, {"n": 1})
    behind = list(iter(lambda: consumer.reserve(timeout=3), None))
    assert sorted((d.payload["n"], d.attempt) for d in behind) == [(0, 2), (1, 1)]
    # When it releases task 0 with those behind it
    consumer.release(first, behind)
    # Then they are in the queue for anyone, none held
    try:
        wait_for(lambda: transport.poll_queue(queue) == 2, 5, "both back in the queue")
    finally:
        consumer.close()
        transport.purge(queue)
        transport.close()


def test_frames_split_across_reads_and_many_in_one_read_arrive_whole(amqp_uri):
    # Given a queue holding small tasks around ones whose bodies span several frames of
    # 128 KiB, each longer than one read of a pump (``link.PUMP_SIZE``, 64 KiB)
    from asynctask_amqp.link import PUMP_SIZE

    queue = unique_queue("frames")
    transport = open_transport(amqp_uri)
    big = "x" * (3 * 131072 + 17)
    assert len(big) > 2 * PUMP_SIZE
    sent = [{"n": n, "pad": big if n % 7 == 3 else "y" * n} for n in range(30)]
    for payload in sent:
        transport.submit_task(queue, payload)
    # When a relay's consumer takes them all, many read ahead at once (prefetch 10)
    got = []
    with transport.consumer(queue, prefetch=10) as consumer:
        for _ in sent:
            delivery = consumer.reserve(10.0)
            assert delivery is not None, f"only {len(got)} of {len(sent)} arrived"
            got.append(delivery.payload)
            consumer.ack(delivery)
        assert consumer.reserve(0.5) is None
    # Then every payload arrived whole, in order, once
    assert [p["n"] for p in got] == [p["n"] for p in sent]
    assert got == sent
    transport.purge(queue)
    transport.close()
