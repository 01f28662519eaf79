"""``asynctask top``: one frame with ``--once``, and the live view read off a tmux screen."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid

import pytest

from asynctask import get_transport
from asynctask.testing import clean_environment
from support import free_port, scrape, total, wait_for


def top_once(uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asynctask", "top", "--once",
         "--set", f"asynctask_transport={uri}", *args],
        capture_output=True, text=True, timeout=60, env=clean_environment(COLUMNS="160"),
    )  # fmt: skip


def row(output: str, queue: str) -> list[str]:
    """The cells of ``queue``'s line of a frame."""
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line) if c.strip()]
        if cells and cells[0] == queue:
            return cells
    raise AssertionError(f"no line for {queue} in:\n{output}")


def test_once_shows_counts_age_and_rates_from_the_metrics(
    backend_uri, queue, ledger, start_workers, tmp_path
):
    # Given a queue nobody serves with 3 ready tasks, and a served queue with work flowing
    idle = queue + "_idle"
    transport = get_transport(backend_uri)
    transport.submit_tasks(idle, [{"n": n} for n in range(3)])
    transport.submit_tasks(
        queue,
        [{"ledger": str(ledger), "n": n, "seconds": 0.02} for n in range(500)]
        + [{"ledger": str(ledger), "n": 1000, "fail": True}],
    )
    port = free_port()
    start_workers(backend_uri, {queue: "test_mixed"}, "--metrics-port", str(port))
    wait_for(
        lambda: total(scrape(port), "asynctask_tasks_total", queue=queue) > 0, 30, "first task"
    )
    # When top prints one frame, measuring rates over one second
    shown = top_once(
        backend_uri, "--queue", idle, "--queue", queue, "--interval", "1",
        "--metrics", f"http://127.0.0.1:{port}/metrics",
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    # Then the idle queue shows its 3 ready tasks, none in flight, and the age of the oldest
    _, ready, in_flight, retrying, failed, processed, _, oldest = row(shown.stdout, idle)
    amqp = backend_uri.startswith("amqp")
    # (AMQP cannot count tasks in flight, nor look at a task without taking it)
    assert (ready, in_flight, retrying, failed, processed) == (
        "3", "-" if amqp else "0", "0", "0", "0.0"
    )  # fmt: skip
    if amqp:
        assert oldest == "-"
    else:
        assert re.fullmatch(r"\d+s", oldest), oldest
    # and the served queue shows a rate of tasks processed, from the workers' counters
    cells = row(shown.stdout, queue)
    assert float(cells[5]) > 0, shown.stdout
    assert "rates over the last minute from" in shown.stdout
    transport.purge(idle)
    transport.purge(queue)


def test_once_without_metrics_says_where_rates_come_from(filesys_uri, queue):
    get_transport(filesys_uri).submit_task(queue, {"n": 1})
    shown = top_once(filesys_uri, "--queue", queue)
    assert shown.returncode == 0, shown.stderr
    assert row(shown.stdout, queue)[1:6] == ["1", "0", "0", "0", "-"]
    assert "--metrics-port" in shown.stdout


def test_live_view_in_tmux_follows_the_queue_and_quits_on_ctrl_c(filesys_uri, queue, tmp_path):
    if shutil.which("tmux") is None:
        # .ci/run installs tmux: in CI a missing tmux is a failure, not a skip
        if os.environ.get("ASYNCTASK_REQUIRE_SERVICES") == "1":
            pytest.fail("tmux is not installed (apt-get install tmux)")
        pytest.skip("tmux is not installed (apt-get install tmux)")
    # Given top running live in a 160x30 terminal (a tmux server of this test's own)
    socket = f"asynctask-top-{uuid.uuid4().hex[:8]}"
    tmux = ["tmux", "-L", socket]
    command = (
        f"{sys.executable} -m asynctask top --interval 0.3 --queue {queue} "
        f"--set asynctask_transport={filesys_uri}; echo TOP-EXITED $?; sleep 30"
    )
    subprocess.run([*tmux, "new-session", "-d", "-x", "160", "-y", "30", command], check=True)

    def screen() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True).stdout

    def cells() -> list[str] | None:
        try:
            return row(screen(), queue)
        except AssertionError:
            return None

    try:
        first = wait_for(cells, 30, "top's first frame")
        assert first[1] == "0"
        # When 4 tasks are submitted
        get_transport(filesys_uri).submit_tasks(queue, [{"n": n} for n in range(4)])
        # Then the screen shows them within a few refreshes
        wait_for(lambda: (c := cells()) and c[1] == "4", 10, "the screen to show 4 ready")
        assert "asynctask top" in screen()
        # When Ctrl-C is typed, top leaves its screen and exits 0
        subprocess.run([*tmux, "send-keys", "C-c"], check=True)
        wait_for(lambda: "TOP-EXITED 0" in screen(), 10, "top to exit 0")
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
