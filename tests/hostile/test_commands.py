"""Scheduler ``command`` entries: only their own queue runs them, bounded in time and
output, and without the process's ``ASYNCTASK_*`` variables (DESIGN.md section 5).

The worker children run a command entry through ``asynctask_command``; here its run loop
takes the scheduled queue in this process, exactly as a child does.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import pytest

from asynctask import get_transport
from asynctask.command import CommandWorker
from asynctask.errors import ConfigurationError
from asynctask.runner import LoopOptions, run_loop
from asynctask.settings import configure, load_settings


def _settings(tmp_path, *entries: dict) -> str:
    uri = f"filesys:{tmp_path / 'queues'}"
    configure(
        load_settings(
            overrides=[
                f"asynctask_transport={uri}",
                f"asynctask_scheduled_workers={json.dumps(list(entries))}",
            ]
        )
    )
    return uri


def _run(uri: str, queue: str) -> None:
    run_loop(CommandWorker(), get_transport(uri), queue, LoopOptions(stop_when_idle=True))


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_task_on_another_scheduled_queue_cannot_run_the_backup_entry(tmp_path):
    # Given a backup command entry, and another entry with a queue of its own
    mark = tmp_path / "backup-ran"
    uri = _settings(
        tmp_path,
        {"command": _python(f"open({str(mark)!r}, 'w')"), "name": "backup", "hour": 3},
        {"command": _python("pass"), "name": "other", "hour": 4},
    )
    # When somebody writes {"schedule": "backup"} to the other entry's queue
    get_transport(uri).submit_task("scheduled_other", {"schedule": "backup"})
    _run(uri, "scheduled_other")
    # Then the backup did not run; the task is in the failed store, saying why
    assert not mark.exists()
    [failed] = get_transport(uri).failed_tasks("scheduled_other")
    assert "scheduled_other" in failed.error and "backup" in failed.error


def test_a_command_past_its_timeout_is_stopped_and_fails(tmp_path):
    # Given a command entry with a timeout of 1 s that would run for a minute
    uri = _settings(
        tmp_path, {"command": _python("import time; time.sleep(60)"), "name": "slow",
                   "hour": 3, "timeout": 1},
    )  # fmt: skip
    get_transport(uri).submit_task("scheduled_slow", {"schedule": "slow"})
    # When its queue is taken
    began = time.monotonic()
    _run(uri, "scheduled_slow")
    # Then it was stopped after about a second, and failed saying so
    assert time.monotonic() - began < 15
    [failed] = get_transport(uri).failed_tasks("scheduled_slow")
    assert "timeout" in failed.error


def test_a_command_timeout_is_checked_at_start_up(tmp_path):
    with pytest.raises(ConfigurationError, match="timeout must be a number"):
        _settings(tmp_path, {"command": ["true"], "name": "x", "hour": 3, "timeout": -1})


def test_a_command_that_prints_megabytes_is_bounded_in_the_log_and_the_error(tmp_path, caplog):
    # Given a command that prints 20 MB and fails
    code = "import sys\nfor _ in range(20): sys.stdout.write('x' * 1_000_000)\nsys.exit(3)"
    uri = _settings(tmp_path, {"command": _python(code), "name": "loud", "hour": 3})
    get_transport(uri).submit_task("scheduled_loud", {"schedule": "loud"})
    caplog.set_level(logging.INFO)
    # When it runs
    _run(uri, "scheduled_loud")
    # Then the log and the failed store keep a bounded tail of it
    logged = sum(len(r.getMessage()) for r in caplog.records)
    assert logged < 100_000
    [failed] = get_transport(uri).failed_tasks("scheduled_loud")
    assert "code 3" in failed.error and len(failed.error) < 20_000


def test_a_command_does_not_inherit_asynctask_variables_unless_listed(
    tmp_path, monkeypatch, caplog
):
    # Given the worker's environment holds the transport URI with a password
    monkeypatch.setenv("ASYNCTASK_SECRET_THING", "hunter2-in-env")
    printer = _python(
        "import os; print(sorted(k for k in os.environ if k.startswith('ASYNCTASK')))"
    )
    uri = _settings(
        tmp_path,
        {"command": printer, "name": "plain", "hour": 3},
        {"command": printer, "name": "listed", "hour": 3, "env": ["ASYNCTASK_SECRET_THING"]},
    )
    caplog.set_level(logging.INFO)
    for name in ("plain", "listed"):
        get_transport(uri).submit_task(f"scheduled_{name}", {"schedule": name})
        # When each entry's command runs
        _run(uri, f"scheduled_{name}")
    # Then only the entry that lists the variable gets it
    lines = [r.getMessage() for r in caplog.records]
    assert "[]" in lines
    assert "['ASYNCTASK_SECRET_THING']" in lines
