"""One CLI that behaves the same everywhere (issue 14, section 4)."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from importlib.metadata import version

from asynctask import get_transport
from asynctask.testing import clean_environment, unique_queue
from clitools import run_asynctask
from support import reserve_within


def test_queues_lists_every_queue_holding_a_task_in_any_state_and_no_empty_one(backend_uri):
    # Given a queue with a ready task, one with a delayed task, one with a failed task,
    # and one emptied by a purge
    transport = get_transport(backend_uri)
    ready, delayed, failed, empty = (unique_queue(p) for p in ("rdy", "dly", "fld", "emp"))
    transport.submit_task(ready, {"n": 1})
    transport.submit_task(delayed, {"n": 1}, delay=600)
    transport.submit_task(failed, {"n": 1})
    with transport.consumer(failed) as consumer:
        consumer.fail(reserve_within(consumer), "boom")
    transport.submit_task(empty, {"n": 1})
    transport.purge(empty)
    try:
        # When `queues --json` lists them
        result = run_asynctask("queues", "--json", uri=backend_uri)
        assert result.code == 0, result.err
        names = {row["name"]: row for row in json.loads(result.out)}
        # Then the three holding a task are there with JSON numbers, the empty one is not
        assert {ready, delayed, failed} <= set(names), names.keys()
        assert empty not in names
        assert names[ready]["ready"] == 1 and names[failed]["failed"] == 1
    finally:
        transport.purge(ready)
        transport.purge(delayed)
        transport.purge_failed(failed)


def test_version_lists_every_installed_asynctask_distribution():
    result = run_asynctask("--version")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    for name in ("asynctask-core", "asynctask-filesys", "asynctask-redis", "asynctask-testworkers"):
        assert f"{name} {version(name)}" in lines, result.out


def test_json_on_every_command_gives_json_values(tmp_path):
    uri = f"filesys:{tmp_path / 'q'}"
    queue = unique_queue()
    # submit, queues, purge, failed list/requeue/purge, settings, plugins, schedule
    submitted = json.loads(run_asynctask("submit", queue, '{"n": 1}', "--json", uri=uri).out)
    assert submitted["queue"] == queue and len(submitted["ids"]) == 1
    [row] = [r for r in json.loads(run_asynctask("queues", "--json", uri=uri).out)]
    assert row["ready"] == 1
    purged = json.loads(run_asynctask("purge", queue, "--json", uri=uri).out)
    assert purged == {"queue": queue, "purged": 1}
    assert json.loads(run_asynctask("failed", "list", queue, "--json", uri=uri).out) == []
    requeued = json.loads(run_asynctask("failed", "requeue", queue, "--json", uri=uri).out)
    assert requeued == {"queue": queue, "requeued": 0, "missing": []}
    gone = json.loads(run_asynctask("failed", "purge", queue, "--json", uri=uri).out)
    assert gone == {"queue": queue, "purged": 0, "missing": []}
    settings = {
        row["name"]: row["value"]
        for row in json.loads(
            run_asynctask(
                "settings", "--json", "--set", 'asynctask_workers={"a_b": "w"}', uri=uri
            ).out
        )
    }
    assert settings["asynctask_workers_poll_interval"] == 500  # a number, not "500"
    assert settings["asynctask_workers"] == {"a_b": "w"}  # an object, not its JSON text
    assert settings["asynctask_transport"] == uri
    assert isinstance(json.loads(run_asynctask("plugins", "--json").out), list)
    assert json.loads(run_asynctask("schedule", "--json", uri=uri).out) == []


def test_failed_requeue_and_purge_of_an_absent_id_exit_1_naming_it(tmp_path):
    uri = f"filesys:{tmp_path / 'q'}"
    queue = unique_queue()
    transport = get_transport(uri)
    transport.submit_task(queue, {"n": 1})
    with transport.consumer(queue) as consumer:
        delivery = consumer.reserve(2.0)
        assert delivery is not None
        consumer.fail(delivery, "boom")
    absent = "0" * 32
    # When one id is there and one is not
    result = run_asynctask("failed", "requeue", queue, delivery.id, absent, uri=uri)
    # Then the one there is requeued, and the command exits 1 naming the other
    assert result.code == 1, result.err
    assert absent in result.err and "Requeued 1" in result.out
    result = run_asynctask("failed", "purge", queue, absent, uri=uri)
    assert result.code == 1 and absent in result.err
    assert transport.queue_stats(queue).ready == 1


def _in_a_terminal(args: list[str], answer: bytes) -> tuple[int, str]:
    """Run ``asynctask ARGS`` on a pseudo-terminal, typing ``answer``."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "asynctask", *args],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=clean_environment(),
    )
    os.close(follower)
    output = b""
    deadline = time.monotonic() + 30
    sent = False
    while process.poll() is None and time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                output += os.read(leader, 1024)
            except OSError:
                break
        if not sent and b"?" in output:
            os.write(leader, answer)
            sent = True
    code = process.wait(10)
    os.close(leader)
    return code, output.decode(errors="replace")


def test_purge_and_failed_purge_ask_on_a_terminal_unless_yes(tmp_path):
    uri = f"filesys:{tmp_path / 'q'}"
    queue = unique_queue()
    transport = get_transport(uri)
    transport.submit_tasks(queue, [{"n": 1}, {"n": 2}])
    common = ["--set", f"asynctask_transport={uri}"]
    # When the person answers no, nothing is deleted and the exit code is 1
    code, output = _in_a_terminal(["purge", queue, *common], b"n\n")
    assert "Delete the 2 waiting tasks" in output and code == 1, output
    assert transport.queue_stats(queue).ready == 2
    # When they answer yes, the tasks are deleted
    code, output = _in_a_terminal(["purge", queue, *common], b"y\n")
    assert code == 0 and "Purged 2" in output, output
    # failed purge asks too; --yes does not ask
    code, output = _in_a_terminal(["failed", "purge", queue, *common], b"n\n")
    assert "for good?" in output and code == 1, output
    code, output = _in_a_terminal(["failed", "purge", queue, "--yes", *common], b"")
    assert code == 0 and "?" not in output, output


def test_a_set_value_that_starts_like_json_but_is_not_says_where_it_breaks():
    result = run_asynctask("settings", "--set", 'asynctask_workers={"a": "b",}')
    assert result.code == 2
    assert "not valid JSON" in result.err and "column 11" in result.err, result.err


def test_a_uri_with_one_slash_suggests_two():
    result = run_asynctask("queues", uri="redis:/127.0.0.1:6379/5")
    assert result.code == 2
    assert "'redis://127.0.0.1:6379/5'" in result.err, result.err


def test_a_schedule_that_can_never_fire_is_refused_naming_the_entry(tmp_path):
    uri = f"filesys:{tmp_path / 'q'}"
    for entry in (
        {"worker": "test_record", "month": 2, "day": 31},
        {"worker": "test_record", "second": "*/5", "end_date": "2020-01-01"},
    ):
        schedules = json.dumps([{"worker": "test_record", "name": "ok", "minute": 1}, entry])
        for args in (["schedule"], ["workers", "--scheduler"]):
            result = run_asynctask(
                *args, "--set", f"asynctask_scheduled_workers={schedules}", uri=uri
            )
            assert result.code == 2, result.err
            assert "entry #2" in result.err and "can never fire" in result.err, result.err


def test_failed_list_pages_with_limit_and_offset(tmp_path):
    """``--offset`` reaches past the first page. Failed (exit 2, no such option) before
    the command had it."""
    uri = f"filesys:{tmp_path / 'q'}"
    queue = unique_queue()
    transport = get_transport(uri)
    # Given five failed tasks, failed in order
    ids = transport.submit_tasks(queue, [{"n": n} for n in range(5)])
    with transport.consumer(queue) as consumer:
        for _ in ids:
            delivery = consumer.reserve(2.0)
            assert delivery is not None
            consumer.fail(delivery, f"boom {delivery.payload['n']}")
    assert [t.id for t in transport.failed_tasks(queue)] == ids

    def page(*options: str) -> list[str]:
        result = run_asynctask("failed", "list", queue, *options, "--json", uri=uri)
        assert result.code == 0, result.err
        return [task["id"] for task in json.loads(result.out)]

    # When they are listed two at a time, then Each page holds the next two, oldest first
    assert page("--limit", "2") == ids[:2]
    assert page("--limit", "2", "--offset", "2") == ids[2:4]
    assert page("--limit", "2", "--offset", "4") == ids[4:]
    # And past the end there is nothing, said so in the table form
    result = run_asynctask("failed", "list", queue, "--offset", "5", uri=uri)
    assert result.code == 0 and "No failed tasks" in result.out and "first 5" in result.out
    # And a negative offset is bad usage
    assert run_asynctask("failed", "list", queue, "--offset", "-1", uri=uri).code == 2
