"""Task status in the in-process run loop (``process_queue``/``run_worker``), on localmem."""

from __future__ import annotations

import logging
import threading

import pytest

from asynctask import process_queue
from asynctask.runner import LoopOptions, run_loop
from asynctask.settings import configure, load_settings
from asynctask.status import StatusNotTracked
from asynctask.testing import unique_queue
from asynctask.worker import AsyncTaskWorker


class Gated(AsyncTaskWorker):
    name = "test_gated"
    started = threading.Event()
    go = threading.Event()

    def process(self, payload):
        self.started.set()
        self.go.wait(30)
        return {"would": "be the result"}


def test_a_task_cancelled_while_running_in_process_keeps_no_result(transport, caplog):
    # Given a task running in this process's run loop
    queue = unique_queue("inproc")
    tid = transport.submit_task(queue, {})
    Gated.started.clear()
    Gated.go.clear()
    loop = threading.Thread(
        target=run_loop, args=(Gated(), transport, queue, LoopOptions(max_tasks=1))
    )
    with caplog.at_level(logging.WARNING):
        loop.start()
        assert Gated.started.wait(10)
        # When it is cancelled, then returns
        assert transport.cancel(tid) is True
        Gated.go.set()
        loop.join(10)
    # Then it stays cancelled, its result discarded, and the log says so
    status = transport.status(tid)
    assert status is not None and (status.state, status.result) == ("cancelled", None)
    assert f"Task {tid} was cancelled while it ran; it stays cancelled" in caplog.text
    assert transport.failed_tasks(queue) == [] and transport.stored(queue) == 0


def test_track_status_reaches_the_consumer_from_the_queue_entry(transport):
    # Given a queue entry that turns tracking off for a worker that keeps it
    queue = unique_queue("untracked")
    configure(
        load_settings(
            overrides=[
                "asynctask_transport=localmem:",
                f'asynctask_workers={{"{queue}": {{"worker": "test_record", "track_status": false}}}}',
            ],
            environ={},
        )
    )
    tid = transport.submit_task(queue, {})
    # When the queue is drained in process
    assert process_queue(queue) == 1
    # Then its status names the setting
    with pytest.raises(StatusNotTracked, match="track_status"):
        transport.status(tid)


class AsyncResult(AsyncTaskWorker):
    name = "test_async_result"

    async def process(self, payload):
        return {"doubled": payload["n"] * 2}


class ThreadedResult(AsyncTaskWorker):
    name = "test_threaded_result"
    child_concurrency = 3

    def process(self, payload):
        return [payload["n"]]


def test_async_and_threaded_workers_keep_their_results(transport):
    # Given tasks for a worker on the event loop and one in threads
    for worker, expected in (
        (AsyncResult(), lambda n: {"doubled": 2 * n}),
        (ThreadedResult(), lambda n: [n]),
    ):
        queue = unique_queue("results")
        ids = transport.submit_tasks(queue, [{"n": n} for n in range(5)])
        # When they run, many at once
        run_loop(worker, transport, queue, LoopOptions(stop_when_idle=True, wait=0.05))
        # Then each task's status holds what its process() returned
        for n, task_id in enumerate(ids):
            status = transport.status(task_id)
            assert status is not None and status.state == "succeeded"
            assert status.result == expected(n), (worker, status)
