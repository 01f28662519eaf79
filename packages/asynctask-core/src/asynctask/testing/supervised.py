"""The status contract's stories that need ``asynctask workers``: a supervisor and its
children (DESIGN.md section 6), as one mixin.

A transport whose consumers run in other processes adds it beside ``StatusContract``::

    class TestRedisTransport(TransportContract, StatusContract, SupervisedStatusContract):
        ...                      # the same fixtures

It starts the real command (``python -m asynctask workers``) on ``transport.uri``, with
the ``asynctask_state`` of the test's transport, and the contract's worker
(``asynctask.testing.cancelworker``, imported through ``asynctask_imports``). An
in-process store (``localmem``) cannot be shared with a child: it runs the in-process
cancel story of ``StatusContract`` only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from asynctask.testing.cancelworker import CANCEL_WORKER, ledger_lines
from asynctask.testing.commands import FAST_CHECKS, clean_environment, workers_command
from asynctask.transport import Transport

#: the contract's bound: the child running a cancelled task is gone within this
REPLACED_WITHIN = 1.0


class Supervisor:
    """A running ``asynctask workers`` command."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process

    def children(self) -> list[int]:
        """The pids of its children now (Linux: ``/proc``)."""
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except FileNotFoundError:
            return []

    def stop(self, timeout: float = 60) -> tuple[int, str]:
        """SIGTERM, then its exit code and what it logged."""
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        assert self.process.stderr is not None
        return code, self.process.stderr.read()

    def kill(self) -> None:
        """Kill it and its children (a test that failed half-way)."""
        if self.process.poll() is None:
            for pid in self.children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.kill()
            self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()


def wait_for(read: Callable[[], Any], timeout: float, what: str) -> Any:
    """``read()`` every 50 ms until it is true (its value returned); fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = read()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class SupervisedStatusContract:
    """The supervised stories; fixtures ``transport`` and ``queue`` come from the
    transport's contract class."""

    @pytest.fixture
    def supervise(self, tmp_path: Path) -> Iterator[Callable[..., Supervisor]]:
        """Start ``asynctask workers`` on a transport's URI and state store, for
        ``queue``, one child; each is killed at the end if still running."""
        started: list[Supervisor] = []

        def start(transport: Transport, queue: str, prefetch: int = 1) -> Supervisor:
            settings: dict[str, Any] = {
                **FAST_CHECKS,
                "asynctask_imports": ["asynctask.testing.cancelworker"],
            }
            if transport.state_uri is not None:
                settings["asynctask_state"] = transport.state_uri
            command = workers_command(
                transport.uri,
                {queue: {"worker": CANCEL_WORKER, "prefetch": prefetch}},
                settings=settings,
            )
            process = subprocess.Popen(
                command, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=clean_environment()
            )
            started.append(Supervisor(process))
            return started[-1]

        yield start
        for supervisor in started:
            supervisor.kill()

    def test_a_task_cancelled_while_running_has_its_child_replaced_and_is_not_retried(
        self, transport: Transport, queue: str, tmp_path: Path, supervise: Any
    ) -> None:
        """Fails if the child runs on past the bound, or the task comes back: retried, or
        given up into the failed store (its worker has no retry left, and the delivery
        that comes back after its child was killed is past its last attempt: checked
        against a run loop that gave up on it before ``start()`` could drop it, the
        task was in the failed store reading ``cancelled``)."""
        # Given a task that runs 30 s, and one behind it, on one child of a worker
        # without retries
        ledger = str(tmp_path / "ledger.jsonl")
        long_id = transport.submit_task(queue, {"ledger": ledger, "n": 1, "seconds": 30})
        next_id = transport.submit_task(queue, {"ledger": ledger, "n": 2})
        workers = supervise(transport, queue)
        wait_for(lambda: ledger_lines(ledger, "start"), 60, "the long task to start")
        status = wait_for(lambda: transport.status(long_id), 10, "its status")
        assert status.state == "running", status
        (child,) = wait_for(workers.children, 10, "its child")
        # When it is cancelled while it runs
        cancelled = time.monotonic()
        assert transport.cancel(long_id) is True
        # Then its child is gone within the bound, and a new one runs the next task
        wait_for(lambda: child not in workers.children(), 10, "the child to be replaced")
        took = time.monotonic() - cancelled
        assert took < REPLACED_WITHIN, f"the child was replaced {took:.2f} s after the cancel"
        done = transport.wait(next_id, timeout=60)
        assert done.state == "succeeded", done
        # And the cancelled task stays cancelled: never started again, not failed
        time.sleep(1.0)  # a retry or a give-up would have happened by now
        starts = [line["n"] for line in ledger_lines(ledger, "start")]
        assert starts == [1, 2], starts
        final = transport.status(long_id)
        assert final is not None and final.state == "cancelled", final
        assert final.attempts == 1, final
        assert transport.failed_tasks(queue) == []
        if "in_flight" in transport.features.counts:  # AMQP cannot count it
            assert transport.queue_stats(queue).in_flight == 0
        code, output = workers.stop()
        assert code == 0, output
        assert f"Task {long_id} was cancelled while it ran; replacing its child" in output
        assert f"replaced: it ran the cancelled task {long_id}" in output
        assert "gave up" not in output, output
