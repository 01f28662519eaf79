"""How ``asynctask workers`` ends (issue 14, section 1): outages, crash loops, the summary
of a batch run, and the exit codes of DESIGN.md section 4."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from asynctask import get_transport
from asynctask.testing import FAST_CHECKS, clean_environment, unique_queue, workers_command
from clitools import OwnRedis, fake_distribution, free_port, run_asynctask

SETUP_FAILS = """
from asynctask import AsyncTaskWorker

class BadSetup(AsyncTaskWorker):
    name = "bad_setup"

    def setup(self):
        raise RuntimeError("no database for you")

    def process(self, payload):
        pass
"""

DIES_ON_EVERY_TASK = """
import os
from asynctask import AsyncTaskWorker

class DiesOnTask(AsyncTaskWorker):
    name = "dies_on_task"
    max_retries = 1000

    def process(self, payload):
        os._exit(9)
"""

DIES_TWICE_IN_THREE = """
import os
from pathlib import Path
from asynctask import AsyncTaskWorker

class DiesTwiceInThree(AsyncTaskWorker):
    name = "dies_twice_in_three"
    max_retries = 1000

    def process(self, payload):
        counter = Path(payload["counter"])
        runs = int(counter.read_text() or 0) + 1 if counter.exists() else 1
        counter.write_text(str(runs))
        if runs % 3:
            os._exit(9)
"""


def _workers(uri: str, queues: dict[str, object], *args: str) -> list[str]:
    return workers_command(uri, queues, *args, settings=FAST_CHECKS)[3:]


def test_halt_when_empty_gives_up_after_retry_timeout_with_exit_3_even_quiet(tmp_path):
    # Given a backend that is not there (nothing listens on the port)
    uri = f"redis://127.0.0.1:{free_port()}/0?retry_timeout=2"
    # When a batch run starts, quiet
    result = run_asynctask(
        *_workers(uri, {unique_queue(): "test_record"}, "--halt-when-empty", "-q"), cwd=tmp_path
    )
    # Then it says the backend is unreachable (even under -q) and gives up with exit 3
    assert result.code == 3, result.err
    assert "unreachable" in result.err
    assert "Traceback" not in result.err, result.err
    assert result.seconds < 30


def test_an_outage_is_told_when_it_starts_and_when_it_ends_under_quiet(
    own_redis: OwnRedis, tmp_path
):
    # Given workers started, quiet, while their Redis is down
    own_redis.stop()
    log = tmp_path / "workers.log"
    command = workers_command(own_redis.uri(), {unique_queue(): "test_record"}, "-q")
    with log.open("w") as err:
        process = subprocess.Popen(command, stderr=err, cwd=tmp_path, env=clean_environment())
    try:
        deadline = time.monotonic() + 20
        while "unreachable" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        # Then the start of the outage is told
        assert "unreachable" in log.read_text(), log.read_text()
        # When the server comes back Then its end is told too
        own_redis.start()
        deadline = time.monotonic() + 20
        while "reachable again" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "reachable again" in log.read_text(), log.read_text()
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_child_that_cannot_start_gives_one_traceback_then_a_line_per_restart_then_exit_5(
    tmp_path,
):
    # Given a worker whose setup() always raises, imported with --import
    (tmp_path / "badsetup.py").write_text(SETUP_FAILS)
    uri = f"filesys:{tmp_path / 'q'}"
    command = _workers(uri, {unique_queue(): "bad_setup"}, "--import", "badsetup")
    # When a batch run starts
    result = run_asynctask(
        *command, "--halt-when-empty", cwd=tmp_path, PYTHONPATH=str(tmp_path), timeout=90
    )
    # Then the first failure's traceback is shown once, then one line per restart
    assert result.code == 5, result.err
    assert result.err.count("Traceback") == 1, result.err
    assert result.err.count("setup() raised: RuntimeError: no database for you") == 5, result.err
    for count in range(1, 5):
        assert f"could not start ({count} in a row)" in result.err, result.err
    assert "5 times in a row" in result.err


def test_a_child_that_dies_on_every_task_is_a_crash_loop_too(tmp_path):
    # Given a worker that kills its own process on every task, with retries to spare
    (tmp_path / "dies.py").write_text(DIES_ON_EVERY_TASK)
    uri = f"filesys:{tmp_path / 'q'}"
    queue = unique_queue()
    with get_transport(uri) as transport:
        transport.submit_task(queue, {"n": 1})
    command = _workers(uri, {queue: "dies_on_task"}, "--import", "dies")
    # When a batch run starts
    result = run_asynctask(
        *command, "--halt-when-empty", cwd=tmp_path, PYTHONPATH=str(tmp_path), timeout=90
    )
    # Then each death is one line with its count, and the fifth in a row ends the run
    # with exit 5 instead of restarting forever
    assert result.code == 5, result.err
    for count in range(1, 5):
        assert f"before finishing a task ({count} in a row)" in result.err, result.err
    assert "5 times in a row" in result.err, result.err
    assert result.err.count("died (exit code 9") == 5, result.err


def test_a_child_that_finished_a_task_resets_the_count(tmp_path):
    # Given a worker that dies on two runs out of three, and three tasks: six deaths in
    # all, but never more than two in a row without a task finished
    (tmp_path / "dies.py").write_text(DIES_TWICE_IN_THREE)
    uri = f"filesys:{tmp_path / 'q'}"
    queue = unique_queue()
    counter = tmp_path / "runs"
    with get_transport(uri) as transport:
        transport.submit_tasks(queue, [{"counter": str(counter)}] * 3)
    command = _workers(uri, {queue: "dies_twice_in_three"}, "--import", "dies")
    # When a batch run starts
    result = run_asynctask(
        *command, "--halt-when-empty", cwd=tmp_path, PYTHONPATH=str(tmp_path), timeout=120
    )
    # Then it is no crash loop: every task ends done and the run exits 0
    assert result.code == 0, result.err
    assert counter.read_text() == "9"
    assert "(3 in a row)" not in result.err, result.err


def test_halt_when_empty_ends_with_a_summary_and_fail_on_failed_exits_1(tmp_path):
    # Given 3 tasks that succeed and 1 that always fails, on two queues
    uri = f"filesys:{tmp_path / 'q'}"
    good, bad = unique_queue("good"), unique_queue("bad")
    transport = get_transport(uri)
    transport.submit_tasks(good, [{"ledger": str(tmp_path / "l"), "n": n} for n in range(3)])
    transport.submit_task(bad, {"n": 1})
    queues = {good: "test_record", bad: "test_fail"}
    # When a batch run ends with --fail-on-failed
    result = run_asynctask(
        *_workers(uri, queues, "--halt-when-empty", "--fail-on-failed"), cwd=tmp_path
    )
    # Then it exits 1 and prints the summary per queue
    assert result.code == 1, result.err
    rows = {line.split()[0]: line.split()[1:] for line in result.out.splitlines()[1:]}
    assert rows[good] == ["3", "3", "0", "0"], result.out
    assert rows[bad] == ["3", "0", "2", "1"], result.out  # test_fail: 3 attempts
    # And without --fail-on-failed the same run exits 0
    transport.requeue_failed(bad)
    result = run_asynctask(*_workers(uri, queues, "--halt-when-empty", "--json"), cwd=tmp_path)
    assert result.code == 0, result.err
    assert '"failed": 1' in result.out


BOOM_TRANSPORT = """
from asynctask import hookimpl
from asynctask.transports.localmem import LocalMemTransport


class Boom(LocalMemTransport):
    schemes = ("boom",)

    def _queue_names(self):
        raise ZeroDivisionError("a bug in a transport")


@hookimpl
def asynctask_register_transports(register):
    register(("boom",), lambda: Boom)
"""


def test_an_unexpected_error_exits_70_and_asks_for_a_report(tmp_path):
    # Given a transport plugin with a bug
    site = fake_distribution(
        tmp_path / "site", "boom-transport", {"asynctask": {"boom": "boomplug"}},
        {"boomplug": BOOM_TRANSPORT},
    )  # fmt: skip
    # When `queues` meets it
    result = run_asynctask("queues", uri="boom:", PYTHONPATH=str(site))
    # Then the exit code is 70 and the message asks for a report
    assert result.code == 70, result.err
    assert "ZeroDivisionError" in result.err and "report" in result.err


def test_exit_codes_in_readme_match_the_design_table():
    # The one table (DESIGN.md section 4) is asynctask.exitcodes; the README repeats it.
    from asynctask import exitcodes

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    table = readme[readme.index("Exit codes") :]
    for code in (0, 1, 2, 3, 4, 5, 70, 124):
        assert f"\n| {code} |" in table, code
    assert exitcodes.CRASH_LOOP == 5 and exitcodes.SOFTWARE == 70
    assert sys.executable
