"""``asynctask workers`` with real processes and signals, on every installed transport."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from asynctask import get_transport
from support import events, wait_for


def run_cli(uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asynctask", *args, "--set", f"asynctask_transport={uri}"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_entry_point_worker_processes_every_task_once_then_halts(
    backend_uri, queue, ledger, start_workers
):
    # Given 20 tasks for a worker registered only through an entry point of another distribution
    transport = get_transport(backend_uri)
    transport.submit_tasks(queue, [{"ledger": str(ledger), "n": n} for n in range(20)])
    # When the workers run with --halt-when-empty (two children on the queue)
    workers = start_workers(
        backend_uri, {queue: {"worker": "test_record", "concurrency": 2}}, "--halt-when-empty"
    )
    # Then the command exits 0 and every task was processed exactly once
    assert workers.wait(90) == 0, workers.output()
    done = sorted(e["payload"]["n"] for e in events(ledger, "done"))
    assert done == list(range(20))
    assert transport.queue_stats(queue).ready == 0


def test_failing_task_is_retried_then_listed_requeued_and_processed(
    backend_uri, queue, ledger, start_workers
):
    # Given a task that always fails (test_fail: max_retries 2)
    transport = get_transport(backend_uri)
    transport.submit_task(queue, {"ledger": str(ledger), "n": 7})
    workers = start_workers(backend_uri, {queue: "test_fail"}, "--halt-when-empty")
    assert workers.wait(90) == 0
    # Then it was tried three times and waits in the failed store
    assert len(events(ledger, "start")) == 3
    listed = run_cli(backend_uri, "failed", "list", queue, "--json")
    assert listed.returncode == 0, listed.stderr
    [failed] = json.loads(listed.stdout)
    assert failed["attempts"] == 3 and "failing on purpose: 7" in failed["error"]
    # When a person requeues it and a working worker takes the queue
    requeued = run_cli(backend_uri, "failed", "requeue", queue)
    assert requeued.returncode == 0 and "Requeued 1" in requeued.stdout
    workers = start_workers(backend_uri, {queue: "test_record"}, "--halt-when-empty")
    assert workers.wait(90) == 0
    # Then it is processed
    assert [e["payload"]["n"] for e in events(ledger, "done")] == [7]
    assert json.loads(run_cli(backend_uri, "failed", "list", queue, "--json").stdout) == []


def test_a_child_that_dies_mid_task_is_restarted_and_its_task_runs_again(
    backend_uri, queue, ledger, tmp_path, start_workers
):
    # Given a task whose first run kills its child process with os._exit(1)
    transport = get_transport(backend_uri)
    marker = tmp_path / "crashed"
    transport.submit_task(queue, {"ledger": str(ledger), "marker": str(marker)})
    started = time.monotonic()
    workers = start_workers(backend_uri, {queue: "test_crash_once"}, "--halt-when-empty")
    # Then the supervisor restarts the child, the task comes back and completes
    assert workers.wait(90) == 0
    output = workers.output()
    assert "died (exit code 1) before finishing a task (1 in a row); restarting" in output
    assert len(events(ledger, "start")) == 2
    assert len(events(ledger, "done")) == 1
    bound = transport.features.recovery_seconds
    assert time.monotonic() - started < bound + 15


def test_sigterm_lets_the_running_task_finish_and_exits_0(
    backend_uri, queue, ledger, start_workers
):
    # Given a worker in the middle of a 2 s task
    transport = get_transport(backend_uri)
    workers = start_workers(backend_uri, {queue: "test_slow"})
    transport.submit_task(queue, {"ledger": str(ledger), "seconds": 2})
    wait_for(lambda: events(ledger, "start"), 30, "the task to start")
    # When the supervisor gets SIGTERM
    workers.signal(signal.SIGTERM)
    # Then the task completes and the command exits 0
    assert workers.wait(30) == 0
    assert len(events(ledger, "done")) == 1
    assert transport.queue_stats(queue).ready == 0


def test_task_past_its_timeout_is_stopped_and_counted_failed(
    backend_uri, queue, ledger, start_workers
):
    # Given a worker whose task sleeps past its 1 s timeout (max_retries 1)
    transport = get_transport(backend_uri)
    transport.submit_task(queue, {"ledger": str(ledger)})
    workers = start_workers(backend_uri, {queue: "test_timeout"}, "--halt-when-empty")
    # Then each attempt is stopped, its child replaced, and the task ends in the failed store
    assert workers.wait(90) == 0
    assert len(events(ledger, "start")) == 2
    assert events(ledger, "done") == []
    [failed] = transport.failed_tasks(queue)
    assert "timeout of 1 s" in failed.error
    assert len({e["pid"] for e in events(ledger, "start")}) == 2


def test_children_are_recycled_after_max_tasks_per_child(backend_uri, queue, ledger, start_workers):
    transport = get_transport(backend_uri)
    transport.submit_tasks(queue, [{"ledger": str(ledger), "n": n} for n in range(6)])
    workers = start_workers(backend_uri, {queue: "test_recycle"}, "--halt-when-empty")
    assert workers.wait(90) == 0
    done = events(ledger, "done")
    assert sorted(e["payload"]["n"] for e in done) == list(range(6))
    assert len({e["pid"] for e in done}) >= 3
