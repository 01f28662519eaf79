"""Task status in the in-process run loop (``process_queue``/``run_worker``), on localmem."""

from __future__ import annotations

import pytest

from asynctask import process_queue
from asynctask.runner import LoopOptions, run_loop
from asynctask.settings import configure, load_settings
from asynctask.status import StatusNotTracked
from asynctask.testing import unique_queue
from asynctask.worker import AsyncTaskWorker
from support import cancel_while_running_in_process


def test_a_task_cancelled_while_running_in_process_keeps_no_result(transport, caplog):
    queue = unique_queue("inproc")
    cancel_while_running_in_process(transport, queue, caplog)
    # and it is neither in the failed store nor stored any more
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
