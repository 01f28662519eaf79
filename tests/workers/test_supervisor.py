"""What the command does regardless of the backend (run on the embedded filesys transport)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from asynctask import get_transport
from support import events, wait_for


def test_sigkill_of_the_supervisor_leaves_no_child(filesys_uri, start_workers):
    # Given a supervisor with three children
    workers = start_workers(
        filesys_uri, {"w_one": "test_record", "w_two": {"worker": "test_slow", "concurrency": 2}}
    )
    children = wait_for(
        lambda: len(workers.children()) == 3 and workers.children(), 30, "three children"
    )
    # When it is killed with SIGKILL
    workers.process.kill()
    workers.process.wait()
    # Then no child is left 5 s later
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(pid) for pid in children):
        time.sleep(0.1)
    assert not [pid for pid in children if _alive(pid)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_second_signal_stops_children_at_once(filesys_uri, ledger, start_workers):
    transport = get_transport(filesys_uri)
    workers = start_workers(filesys_uri, {"w_slow": "test_slow"})
    transport.submit_task("w_slow", {"ledger": str(ledger), "seconds": 30})
    wait_for(lambda: events(ledger, "start"), 30, "the task to start")
    workers.signal(signal.SIGTERM)
    time.sleep(0.3)
    workers.signal(signal.SIGINT)
    assert workers.wait(10) == 4
    assert events(ledger, "done") == []


def test_workers_from_hooks_and_imports_run(filesys_uri, ledger, start_workers):
    transport = get_transport(filesys_uri)
    transport.submit_task("w_hooked", {"ledger": str(ledger)})
    transport.submit_task("w_imported", {"ledger": str(ledger)})
    workers = start_workers(
        filesys_uri,
        {"w_hooked": "test_hooked", "w_imported": "test_imported"},
        "--halt-when-empty",
        "--import",
        "asynctask_testworkers.imported",
    )
    assert workers.wait(60) == 0, workers.output()
    assert sorted(e["via"] for e in events(ledger, "done")) == ["hook", "import"]


def test_quiet_leaves_only_errors(filesys_uri, start_workers):
    workers = start_workers(filesys_uri, {"w_quiet": "test_record"}, "--halt-when-empty", "-q")
    assert workers.wait(60) == 0
    assert workers.output() == ""


@pytest.mark.parametrize(
    ("workers_setting", "message"),
    [
        ({"some_queue": "doesntexist"}, "'doesntexist', which does not exist; known workers:"),
        ({"Bad-Queue": "test_record"}, "'Bad-Queue' is not a valid queue name"),
        (
            {"foo": {"worker": "test_record", "rate_max_calls": 5, "rate_period": 0}},
            "rate_period must be a number of seconds > 0, got 0",
        ),
    ],
)
def test_bad_settings_exit_2_before_any_child_starts(
    filesys_uri, start_workers, workers_setting, message
):
    workers = start_workers(filesys_uri, workers_setting)
    assert workers.wait(30) == 2
    output = workers.output()
    assert "asynctask_workers" in output and message in output
    assert "Launching" not in output


def test_nothing_configured_terminates_with_0(filesys_uri, start_workers):
    workers = start_workers(filesys_uri, {"foo": None})
    assert workers.wait(30) == 0
    assert "No workers configured; terminating." in workers.output()


def test_localmem_is_refused_with_a_clear_error(start_workers):
    workers = start_workers("localmem:", {"foo": "test_record"})
    assert workers.wait(30) == 2
    assert "lives in one process only" in workers.output()


def test_scheduler_and_halt_when_empty_are_refused_together(filesys_uri, start_workers):
    workers = start_workers(filesys_uri, {"foo": "test_record"}, "--scheduler", "--halt-when-empty")
    assert workers.wait(30) == 2
    assert "do not go together" in workers.output()


def test_asynctask_workers_is_the_same_command(filesys_uri, tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "asynctask-workers")
    out = subprocess.run(
        [
            script,
            "--set",
            f"asynctask_transport={filesys_uri}",
            "--set",
            'asynctask_workers={"foo": null}',
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert out.returncode == 0 and "No workers configured" in out.stderr
    help_text = subprocess.run(
        [script, "--help"], capture_output=True, text=True, timeout=30
    ).stdout
    assert "--halt-when-empty" in help_text and "--scheduler" in help_text


def test_submit_queues_and_settings_commands(filesys_uri, tmp_path):
    def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "asynctask",
                *args,
                "--set",
                f"asynctask_transport={filesys_uri}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            input=stdin,
            cwd=tmp_path,
        )

    one = cli("submit", "w_cli", '{"n": 1}')
    assert one.returncode == 0 and len(one.stdout.split()) == 1
    many = cli("submit", "w_cli", stdin='{"n": 2}\n{"n": 3}\n')
    assert many.returncode == 0 and len(many.stdout.split()) == 2
    bad = cli("submit", "w_cli", "[1, 2]")
    assert bad.returncode == 2 and "JSON object" in bad.stderr
    bad_name = cli("submit", "W-cli", "{}")
    assert bad_name.returncode == 2 and "'W-cli' is not a valid queue name" in bad_name.stderr
    table = cli("queues")
    assert table.returncode == 0 and "w_cli" in table.stdout and "ready" in table.stdout
    [row] = [q for q in json.loads(cli("queues", "--json").stdout) if q["name"] == "w_cli"]
    assert row["ready"] == 3
    shown = json.loads(cli("settings", "--json").stdout)
    assert {
        "name": "asynctask_transport",
        "value": filesys_uri,
        "source": "--set asynctask_transport",
    } in shown
    assert cli("purge", "w_cli").stdout.strip() == "Purged 3 tasks from w_cli."


def test_a_child_killed_before_it_reads_its_spec_is_restarted(filesys_uri, ledger, monkeypatch):
    # Given a supervisor (in this process) whose first child is SIGKILLed the moment it is
    # launched, before the supervisor has written the child's spec to its stdin
    from asynctask import supervisor
    from asynctask.child import ChildSpec
    from asynctask.settings import load_settings

    get_transport(filesys_uri).submit_task("w_birth", {"ledger": str(ledger)})
    settings = load_settings(overrides=[f"asynctask_transport={filesys_uri}"])
    spec = ChildSpec(
        queue="w_birth",
        worker="test_record",
        settings=settings.raw,
        sources=settings.sources,
        imports=[],
        parent_pid=os.getpid(),
        halt_when_empty=True,
    )
    launched: list[int] = []
    real_popen = subprocess.Popen

    def popen(*args, **kwargs):
        process = real_popen(*args, **kwargs)
        launched.append(process.pid)
        if len(launched) == 1:
            process.kill()
            process.wait()
        return process

    monkeypatch.setattr(supervisor.subprocess, "Popen", popen)
    # When it runs
    code = supervisor.Supervisor([spec], check_interval=0.2, halt_when_empty=True).run()
    # Then it replaced the dead child (it did not crash on the broken pipe), and the
    # replacement did the task and halted
    assert code == 0
    assert len(launched) == 2
    assert len(events(ledger, "done")) == 1
