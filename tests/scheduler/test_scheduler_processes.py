"""Three ``asynctask workers --scheduler`` at once: each firing submitted exactly once."""

from __future__ import annotations

import re
import signal
import time
from datetime import datetime, timedelta

from asynctask import get_transport
from support import events, wait_for


def test_three_schedulers_submit_each_firing_exactly_once(
    backend_uri, ledger, start_workers, queue
):
    # Given one every-second entry and three schedulers started at once
    name = queue[2:]
    entries = [
        {"worker": "test_record", "name": name, "second": "*/1", "payload": {"ledger": str(ledger)}}
    ]
    settings = {"asynctask_scheduled_workers": entries}
    schedulers = [
        start_workers(backend_uri, {}, "--scheduler", settings=settings) for _ in range(3)
    ]
    # When they have run for 5 s after the first firing was processed
    wait_for(lambda: events(ledger, "done"), 60, "the first scheduled task")
    time.sleep(5)
    for scheduler in schedulers:
        scheduler.signal(signal.SIGTERM)
    outputs = []
    for scheduler in schedulers:
        assert scheduler.wait(60) == 0
        outputs.append(scheduler.output())
    # Then every second's firing was submitted by exactly one of them, none missing
    submitted = [k for out in outputs for k in re.findall(r"Submitted firing (\S+) as task", out)]
    assert len(submitted) == len(set(submitted)), submitted
    seconds = sorted(datetime.fromisoformat(k.split(":", 2)[2]) for k in submitted)
    assert len(seconds) >= 5, submitted
    assert seconds[-1] - seconds[0] == timedelta(seconds=len(seconds) - 1), submitted
    # And no firing was processed twice
    transport = get_transport(backend_uri)
    stats = transport.queue_stats(f"scheduled_{name}")
    done = len(events(ledger, "done"))
    assert done <= len(submitted) <= done + (stats.ready or 0) + (stats.in_flight or 0)


def test_a_command_entry_output_reaches_the_log(filesys_uri, start_workers):
    entries = [{"command": ["echo", "cron says hi"], "name": "greeting", "second": "*/1"}]
    workers = start_workers(
        filesys_uri, {}, "--scheduler", settings={"asynctask_scheduled_workers": entries}
    )
    # children first, then the firings: at load 20 the supervisor had not yet set its
    # SIGTERM handler 2.5 s after launch and died of the signal (exit -15)
    wait_for(workers.children, 60, "the supervisor's children")
    time.sleep(2.5)
    workers.signal(signal.SIGTERM)
    assert workers.wait(30) == 0
    assert "cron says hi" in workers.output()


def test_scheduled_queue_child_that_dies_is_restarted(filesys_uri, start_workers, tmp_path):
    marker = tmp_path / "crashed"
    ledger = tmp_path / "ledger.jsonl"
    entries = [
        {
            "worker": "test_crash_once",
            "second": "*/1",
            "payload": {"ledger": str(ledger), "marker": str(marker)},
        }
    ]
    workers = start_workers(
        filesys_uri, {}, "--scheduler", settings={"asynctask_scheduled_workers": entries}
    )
    wait_for(lambda: events(ledger, "done"), 40, "a scheduled task done after the crash")
    workers.signal(signal.SIGTERM)
    assert workers.wait(30) == 0
    assert "died (exit code 1) before finishing a task (1 in a row); restarting" in workers.output()


def test_a_command_text_written_into_a_scheduled_queue_runs_nothing(
    filesys_uri, start_workers, tmp_path
):
    # Given a command entry, and a task written by hand into its queue naming another command
    pwned = tmp_path / "pwned"
    entries = [{"command": ["true"], "name": "nightly", "hour": 3}]
    transport = get_transport(filesys_uri)
    transport.submit_task(
        "scheduled_nightly", {"schedule": "evil", "command": ["touch", str(pwned)]}
    )
    # When the workers serve the scheduled queue
    workers = start_workers(filesys_uri, {}, settings={"asynctask_scheduled_workers": entries})
    wait_for(
        lambda: transport.failed_tasks("scheduled_nightly"), 30, "the task in the failed store"
    )
    workers.signal(signal.SIGTERM)
    assert workers.wait(30) == 0
    # Then nothing ran, and the task waits in the failed store saying why
    assert not pwned.exists()
    [failed] = transport.failed_tasks("scheduled_nightly")
    assert "commands are never taken from a task's payload" in failed.error


def test_a_bad_schedule_entry_exits_2_naming_position_field_and_value(filesys_uri, start_workers):
    entries = [
        {"worker": "test_record", "second": 5},
        {"worker": "test_record", "name": "b", "minute": "*/x"},
    ]
    workers = start_workers(
        filesys_uri, {}, "--scheduler", settings={"asynctask_scheduled_workers": entries}
    )
    assert workers.wait(30) == 2
    output = workers.output()
    assert "entry #2: field 'minute' = '*/x' is not valid" in output
    assert "Launching" not in output
