"""``run_worker``/``process_queue`` (no supervisor) stopped by a real SIGINT or SIGTERM.

Either signal interrupts the task in hand, and the consumer's close hands it back
uncounted: the next worker takes it at attempt 1. SIGINT raises ``KeyboardInterrupt`` (the
process ends as Python ends one: killed by SIGINT); SIGTERM, whose default would kill the
process mid-task and leave the task to the transport's recovery (back at attempt 2),
raises ``SystemExit(143)`` once the task is handed back. A process with a SIGTERM handler
of its own keeps it. A plain ``process`` run in threads cannot be interrupted: there
either signal is a graceful stop (the running task finishes and is settled, handed to no
one meanwhile), and a second signal ends the process by that signal at once.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from asynctask import get_transport
from asynctask.testing import clean_environment, unique_queue
from asynctask.transport import Transport
from support import events, wait_for

#: run_worker in the main thread of a process of its own; argv: worker, queue, own handler
SCRIPT = """
import signal, sys
from asynctask import run_worker
if sys.argv[3] == "own":
    signal.signal(signal.SIGTERM, lambda signum, frame: print("own handler", flush=True))
run_worker(sys.argv[1], sys.argv[2], quiet=True)
"""


def _run_worker(
    uri: str, worker: str, queue: str, own_handler: bool = False
) -> subprocess.Popen[str]:
    env = clean_environment(ASYNCTASK_TRANSPORT=uri)
    argv = [sys.executable, "-c", SCRIPT, worker, queue, "own" if own_handler else "default"]
    # a shell runs a background job with SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler: the worker gets the default disposition, as from a terminal
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_default_sigint,
    )  # fmt: skip


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class _Running:
    """A task running in ``run_worker`` in a process of its own (``_task_running``)."""

    queue: str
    ledger: Path
    transport: Transport
    process: subprocess.Popen[str]


@contextlib.contextmanager
def _task_running(
    uri: str, tmp_path: Path, worker: str, task: dict[str, Any], own_handler: bool = False
) -> Iterator[_Running]:
    """Submit ``task`` (with a ledger) to a queue of its own, run ``worker`` on it in a
    process of its own and wait for the task to start; after the block, a process still
    there is killed (a later test would see it)."""
    queue = unique_queue("sig")
    ledger = tmp_path / "ledger.jsonl"
    transport = get_transport(uri)
    transport.submit_task(queue, {"ledger": str(ledger), **task})
    process = _run_worker(uri, worker, queue, own_handler)
    try:
        wait_for(lambda: events(ledger, "start"), 30, "the task to start")
        yield _Running(queue, ledger, transport, process)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "returncode"),
    [(signal.SIGINT, -signal.SIGINT), (signal.SIGTERM, 128 + signal.SIGTERM)],
    ids=["SIGINT", "SIGTERM"],
)
@pytest.mark.parametrize(
    "worker",
    # a plain process; an async one awaiting; an async one blocking its loop with
    # time.sleep (the loop is not waited for: before, the process stayed until it ended)
    ["test_slow", "test_async_sleep", "test_async_block"],
)
def test_a_signal_stops_run_worker_and_hands_the_task_back_uncounted(
    backend_uri: str, tmp_path: Path, signum: int, returncode: int, worker: str
) -> None:
    # Given run_worker in a process of its own, running a 60 s task
    task = {"seconds": 60, "block": 60}
    with _task_running(backend_uri, tmp_path, worker, task) as run:
        # When the process gets the signal
        run.process.send_signal(signum)
        _, err = run.process.communicate(timeout=30)
    # Then it stopped at once, the task unfinished, not counted as failed
    assert run.process.returncode == returncode, err
    assert events(run.ledger, "done") == []
    assert run.transport.failed_tasks(run.queue) == []
    # and the task is back, its attempt not counted
    with run.transport.consumer(run.queue) as consumer:
        delivery = consumer.reserve(timeout=5)
        assert delivery is not None, "the task was not handed back"
        assert delivery.attempt == 1
        consumer.ack(delivery)


@pytest.mark.slow
def test_a_programs_own_sigterm_handler_is_left_alone(filesys_uri: str, tmp_path: Path) -> None:
    # Given run_worker in a program that handles SIGTERM itself, running a 60 s task
    task = {"seconds": 60}
    with _task_running(filesys_uri, tmp_path, "test_slow", task, own_handler=True) as run:
        process = run.process
        try:
            # When it gets SIGTERM
            process.send_signal(signal.SIGTERM)
            assert process.stdout is not None
            # Then its own handler ran and the task goes on
            assert process.stdout.readline() == "own handler\n"
            assert process.poll() is None
        finally:
            process.send_signal(signal.SIGINT)
            process.communicate(timeout=30)
    assert process.returncode == -signal.SIGINT


def _stop_codes(signum: int) -> int:
    return -signal.SIGINT if signum == signal.SIGINT else 128 + signal.SIGTERM


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_lets_a_task_running_in_a_thread_finish_and_hands_it_to_no_one(
    backend_uri: str, tmp_path: Path, signum: int
) -> None:
    # Given run_worker running a plain process in threads (child_concurrency 50), a 4 s
    # task in one of them: no exception can stop a thread
    with _task_running(backend_uri, tmp_path, "test_thread_sleep", {"seconds": 4}) as run:
        process, transport, queue = run.process, run.transport, run.queue
        # When it gets the signal, with a rival consumer waiting on the queue
        process.send_signal(signum)
        with transport.consumer(queue) as rival:
            # Then the rival gets nothing while the thread runs (before: the task was
            # handed back at once and the rival started it a second time)
            while process.poll() is None:
                taken = rival.reserve(timeout=0.2)
                if taken is not None:
                    rival.release(taken)
                assert taken is None, "the task was handed to another while its thread ran"
        _, err = process.communicate(timeout=30)
    # and the task finished in its thread and was settled as a success, once
    assert process.returncode == _stop_codes(signum), err
    assert len(events(run.ledger, "start")) == 1
    assert len(events(run.ledger, "done")) == 1
    assert transport.failed_tasks(queue) == []
    with transport.consumer(queue) as consumer:
        assert consumer.reserve(timeout=1) is None


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_ends_run_worker_in_threads_at_once_without_handing_back(
    filesys_uri: str, tmp_path: Path, signum: int
) -> None:
    # Given run_worker running a plain process in threads, a 60 s task in one of them,
    # and a first signal that asked it to stop once that task ends
    with _task_running(filesys_uri, tmp_path, "test_thread_sleep", {"seconds": 60}) as run:
        process, transport, queue = run.process, run.transport, run.queue
        process.send_signal(signum)
        time.sleep(0.5)  # (the first signal's handling; nothing to wait on from here)
        assert process.poll() is None, "the first signal did not wait for the thread"
        # When a second signal comes
        process.send_signal(signum)
        process.communicate(timeout=10)
    # Then the process ended at once, by the signal, never as a success
    assert process.returncode == -signum
    assert events(run.ledger, "done") == []
    # and the task was not handed back by the process (its thread might still have run
    # on): the transport's recovery brought it back, counted (before: handed back
    # uncounted by the first signal, while its thread ran)
    with transport.consumer(queue) as rival:
        delivery = rival.reserve(timeout=transport.features.recovery_seconds + 5)
        assert delivery is not None, "the task did not come back by recovery"
        assert delivery.attempt == 2
        rival.ack(delivery)
