"""Liveness that a busy child cannot lose, and stops that cut no task short.

Real ``asynctask workers`` processes on filesys, redis and pgsql with a recovery bound of
2 s. A task whose child lives must never be delivered to anyone else, whatever it does to
its own thread; a child that dies hands back the tasks it had not started, uncounted.
(AMQP keeps liveness in its connection: its relay has its own tests.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from process_fixtures import Workers

from asynctask import get_transport
from asynctask.testing import FAST_CHECKS, clean_environment, require_service, workers_command
from backends import BACKENDS
from support import events, wait_for

#: the recovery bound of these tests, in seconds
BOUND = 2
#: URI options giving each transport that bound (its liveness beat well inside it)
SHORT_BOUND = {
    "filesys": "lease=2&heartbeat=0.5",
    "redis": "recovery_seconds=2&heartbeat_seconds=0.25",
    # A schema of its own: until every worktree's sweep knows owners (asynctask.liveness),
    # an older sweep sharing the default schema would take these rows for dead ones.
    "pgsql": "recovery_seconds=2&schema=asynctask_liveness",
    # heartbeat=1 (in the suite's AMQP URI): a silent host's tasks come back within 3 s;
    # a dead worker's at once, its relay closing the connection (asynctask_amqp.relay)
    "amqp": "retry_timeout=15",
}


@pytest.fixture(params=sorted(SHORT_BOUND))
def short_uri(request, tmp_path) -> str:
    """A transport URI whose dead consumers' tasks come back within ``BOUND`` s."""
    make, check = BACKENDS[request.param]
    if check is not None:
        require_service(request.param, check)
    uri = make(tmp_path)
    return f"{uri}{'&' if '?' in uri else '?'}{SHORT_BOUND[request.param]}"


def test_a_task_holding_the_gil_three_times_the_bound_runs_once(
    short_uri, queue, ledger, start_workers
):
    # Given two children on one queue, a recovery bound of 2 s, and one task that holds
    # the GIL in C for 6 s (no thread of its child runs meanwhile), max_retries 2
    transport = get_transport(short_uri)
    transport.submit_task(queue, {"ledger": str(ledger), "seconds": 3 * BOUND})
    # When the workers run it, the other child waiting on the queue all along
    workers = start_workers(
        short_uri, {queue: {"worker": "test_gil_hog", "concurrency": 2}}, "--halt-when-empty"
    )
    # Then it started once, finished once, and nothing reached the failed store
    assert workers.wait(60) == 0, workers.output()
    assert len(events(ledger, "start")) == 1, events(ledger, "start")
    assert len(events(ledger, "done")) == 1
    assert transport.failed_tasks(queue) == []


def test_a_poison_task_does_not_charge_its_innocent_neighbours(
    short_uri, queue, ledger, start_workers
):
    # Given a poison task (it SIGKILLs its child) ahead of innocent ones, on a worker
    # that reserves the transport's default prefetch at a time (4; pgsql 64: so they ride
    # in the same child), max_retries 3
    transport = get_transport(short_uri)
    prefetch = transport.default_prefetch
    innocent = list(range(1, prefetch))
    payloads = [{"ledger": str(ledger), "n": 0, "poison": True}]
    payloads += [{"ledger": str(ledger), "n": n} for n in innocent]
    transport.submit_tasks(queue, payloads)
    # When one child works the queue (it dies, is restarted, dies again...)
    workers = start_workers(short_uri, {queue: {"worker": "test_poison", "prefetch": prefetch}})
    # Then the poison task reaches the failed store after its four attempts
    failed = wait_for(lambda: transport.failed_tasks(queue), 90, "the poison task to fail")
    # and every innocent task ran once and succeeded
    wait_for(lambda: len(events(ledger, "done")) == len(innocent), 30, "the innocent tasks")
    workers.signal(signal.SIGTERM)
    assert workers.wait(30) == 0
    assert [f.payload["n"] for f in failed if f.payload] == [0]
    starts = [e["payload"]["n"] for e in events(ledger, "start")]
    assert starts.count(0) == 4
    assert sorted(n for n in starts if n) == innocent
    assert sorted(e["payload"]["n"] for e in events(ledger, "done")) == innocent


def test_a_child_killed_mid_batch_charges_only_the_task_it_ran(
    short_uri, queue, ledger, start_workers
):
    # Given ten tasks, the fourth a poison one (it SIGKILLs its child), on an untracked
    # queue whose child reserves 32 at a time: one batch holds them all, and (on redis)
    # the three it finishes before it dies are acknowledged with its next call, which
    # never comes; on every transport only the started task is charged
    transport = get_transport(short_uri)
    payloads = [{"ledger": str(ledger), "n": n, "poison": n == 3} for n in range(10)]
    transport.submit_tasks(queue, payloads)
    entry = {"worker": "test_poison", "prefetch": 32, "track_status": False}
    # When one child works the queue (it dies on the poison task, is restarted...)
    workers = start_workers(short_uri, {queue: entry})
    failed = wait_for(lambda: transport.failed_tasks(queue), 90, "the poison task to fail")
    wait_for(lambda: len(events(ledger, "done")) >= 9, 30, "the innocent tasks")
    workers.signal(signal.SIGTERM)
    assert workers.wait(30) == 0
    # Then the poison task counted one attempt a death, and failed after four
    starts = events(ledger, "start")
    assert [e["attempt"] for e in starts if e["payload"]["n"] == 3] == [1, 2, 3, 4]
    assert [f.payload["n"] for f in failed if f.payload] == [3]
    # and every other task ran exactly once, on its first attempt: the three settled
    # before the first death were not run again, the six never started were handed back
    # uncounted, four times over
    innocent = sorted((e["payload"]["n"], e["attempt"]) for e in starts if e["payload"]["n"] != 3)
    assert innocent == [(n, 1) for n in range(10) if n != 3]
    assert sorted(e["payload"]["n"] for e in events(ledger, "done")) == [0, 1, 2, *range(4, 10)]


def test_a_dead_hosts_task_comes_back_within_the_bound(short_uri, queue, ledger, start_workers):
    # Given a supervisor whose child runs a 30 s task
    transport = get_transport(short_uri)
    transport.submit_task(queue, {"ledger": str(ledger), "seconds": 30})
    workers = start_workers(short_uri, {queue: "test_slow"})
    wait_for(lambda: events(ledger, "start"), 30, "the task to start")
    # When the supervisor is SIGKILLed (its child dies with it: as if the host went down)
    workers.process.kill()
    workers.process.wait()
    began = time.monotonic()
    # Then another worker gets the task within the bound, one attempt counted
    with get_transport(short_uri).consumer(queue) as rival:
        delivery = rival.reserve(timeout=BOUND + 5)
        waited = time.monotonic() - began
        assert delivery is not None, "the dead host's task did not come back"
        assert delivery.attempt == 2
        rival.ack(delivery)
    bound = transport.features.recovery_seconds
    assert waited <= bound + 1.5, f"back after {waited:.1f} s; bound {bound:g} s"


# -- stopping ------------------------------------------------------------------------


def _start_in_own_group(uri: str, workers: dict, tmp_path: Path, *args: str) -> Workers:
    """``asynctask workers`` as systemd starts a service: the leader of its own group."""
    command = workers_command(uri, workers, *args, settings=FAST_CHECKS)
    process = subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=clean_environment(),
        start_new_session=True,
    )
    return Workers(process)


def _stopped(workers: Workers) -> Callable[[], None]:
    def stop() -> None:
        if workers.process.poll() is None:
            os.killpg(workers.process.pid, signal.SIGKILL)
            workers.process.wait()
        if workers.process.stderr is not None:
            workers.process.stderr.close()

    return stop


def test_sigterm_to_the_process_group_lets_every_task_finish(
    filesys_uri, queue, ledger, tmp_path, request
):
    # Given two children, each in the middle of a 3 s task, in a process group of their
    # own (systemd's KillMode=control-group signals the whole group)
    transport = get_transport(filesys_uri)
    transport.submit_tasks(queue, [{"ledger": str(ledger), "seconds": 3, "n": n} for n in (1, 2)])
    workers = _start_in_own_group(
        filesys_uri, {queue: {"worker": "test_slow", "concurrency": 2}}, tmp_path
    )
    request.addfinalizer(_stopped(workers))
    wait_for(lambda: len(events(ledger, "start")) == 2, 30, "both tasks to start")
    # When the whole group gets SIGTERM (each child from the group, then from the supervisor)
    os.killpg(workers.process.pid, signal.SIGTERM)
    # Then the command exits 0 after both tasks finished: none was cut short
    assert workers.wait(30) == 0, workers.output()
    assert sorted(e["payload"]["n"] for e in events(ledger, "done")) == [1, 2]
    assert transport.queue_stats(queue).in_flight == 0


def test_a_stop_forced_by_the_end_of_the_grace_period_exits_4(
    filesys_uri, queue, ledger, start_workers
):
    # Given a child in the middle of a 30 s task, and a grace period of 1 s
    transport = get_transport(filesys_uri)
    transport.submit_task(queue, {"ledger": str(ledger), "seconds": 30})
    workers = start_workers(filesys_uri, {queue: "test_slow"}, "--grace", "1")
    wait_for(lambda: events(ledger, "start"), 30, "the task to start")
    # When SIGTERM asks for a stop and the task does not finish within the grace period
    workers.signal(signal.SIGTERM)
    # Then the children are killed and the command says so: exit 4, never 0
    assert workers.wait(30) == 4, workers.output()
    assert events(ledger, "done") == []


def test_sigint_to_a_child_stops_it_like_sigterm(filesys_uri, queue, ledger, start_workers):
    # Given a child in the middle of a 2 s task
    transport = get_transport(filesys_uri)
    transport.submit_task(queue, {"ledger": str(ledger), "seconds": 2})
    workers = start_workers(filesys_uri, {queue: "test_slow"})
    [child] = wait_for(lambda: workers.children(), 30, "the child")
    wait_for(lambda: events(ledger, "start"), 30, "the task to start")
    # When that child alone gets a real SIGINT
    os.kill(child, signal.SIGINT)
    # Then it finishes its task (not cut short by a KeyboardInterrupt) and exits,
    # and the supervisor starts a new child in its place
    wait_for(lambda: events(ledger, "done"), 10, "the task to finish")
    wait_for(lambda: child not in workers.children(), 10, "the child to exit")
    wait_for(lambda: workers.children(), 10, "a new child")
    assert len(events(ledger, "start")) == 1
    workers.signal(signal.SIGTERM)
    assert workers.wait(30) == 0
