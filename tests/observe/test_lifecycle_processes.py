"""Lifecycle hooks under ``asynctask workers``: each runs in the process where its event happens."""

from __future__ import annotations

import json
import subprocess
import sys

from asynctask import get_transport
from asynctask.testing import clean_environment


def read_events(path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_task_hooks_run_in_children_and_child_hooks_in_the_supervisor(
    backend_uri, queue, ledger, start_workers, tmp_path, monkeypatch
):
    # Given the test plugin writing every event to a file, 3 tasks that succeed, 1 that fails
    log = tmp_path / "events.jsonl"
    monkeypatch.setenv("TESTWORKERS_EVENTS", str(log))
    transport = get_transport(backend_uri)
    ids = transport.submit_tasks(
        queue, [{"ledger": str(ledger), "n": n, "fail": n == 3} for n in range(4)]
    )
    # When the workers run until the queue is empty
    workers = start_workers(backend_uri, {queue: "test_mixed"}, "--halt-when-empty")
    assert workers.wait(90) == 0, workers.output()
    seen = read_events(log)
    # Then the submit was seen in this process, once, with every id
    [submitted] = [e for e in seen if e["hook"] == "submitted"]
    assert submitted["ids"] == ids and submitted["queue"] == queue
    # and the task hooks ran in the child: 3 successes, and the failing task's 3 attempts
    finished = [e for e in seen if e["hook"] == "finished"]
    outcomes = sorted((e["task_id"] == ids[3], e["attempt"], e["outcome"]) for e in finished)
    assert outcomes == [
        (False, 1, "succeeded"), (False, 1, "succeeded"), (False, 1, "succeeded"),
        (True, 1, "retried"), (True, 2, "retried"), (True, 3, "failed"),
    ]  # fmt: skip
    assert "failing on purpose: 3" in finished[-1]["error"]
    started = [e for e in seen if e["hook"] == "started"]
    assert len(started) == 6 and all(e["worker"] == "test_mixed" for e in started)
    [child] = {e["pid"] for e in finished}
    # and the supervisor saw that child start and exit 0
    children = [e for e in seen if e["hook"] == "child"]
    assert [(e["event"], e["child"], e["exit_status"]) for e in children] == [
        ("started", child, None),
        ("exited", child, 0),
    ]
    assert children[0]["pid"] == workers.process.pid != child


def test_a_raising_hook_never_fails_a_task(
    backend_uri, queue, ledger, start_workers, tmp_path, monkeypatch
):
    # Given a plugin whose task_finished hook raises in the worker child
    log = tmp_path / "events.jsonl"
    monkeypatch.setenv("TESTWORKERS_EVENTS", str(log))
    monkeypatch.setenv("TESTWORKERS_RAISE", "finished")
    transport = get_transport(backend_uri)
    transport.submit_tasks(queue, [{"ledger": str(ledger), "n": n} for n in range(5)])
    workers = start_workers(backend_uri, {queue: "test_mixed"}, "--halt-when-empty")
    # Then every task succeeds once, and the hook raised once (then was switched off)
    assert workers.wait(90) == 0
    output = workers.output()
    done = [e for e in map(json.loads, ledger.read_text().splitlines()) if e["event"] == "done"]
    assert sorted(e["payload"]["n"] for e in done) == list(range(5))
    assert len([e for e in read_events(log) if e["hook"] == "raised"]) == 1
    assert output.count("switched off") == 1, output
    stats = transport.queue_stats(queue)
    assert (stats.ready, stats.failed) == (0, 0)


def test_plugin_commands_are_listed_in_help_and_run():
    env = clean_environment()
    shown = subprocess.run(
        [sys.executable, "-m", "asynctask", "--help"], capture_output=True, text=True, env=env
    )
    assert shown.returncode == 0 and "testworkers-hello" in shown.stdout
    ran = subprocess.run(
        [sys.executable, "-m", "asynctask", "testworkers-hello"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert ran.returncode == 0 and "hello from a plugin command" in ran.stdout
