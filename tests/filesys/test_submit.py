"""A tracked submit of ``filesys:`` writes no status record (issue 20).

The status of a task nobody started is read from its task file, which its id names
(``asynctask_filesys.queued``); the record is written by its start. These tests pin
the submit's cost, every read of a waiting task's status, the races of a cancel with a
start, and that a queue written by the previous layout (a record a task, written at
submit, and ids that name no file) is still served.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from asynctask.status import NO_OPTIONS
from asynctask.testing import unique_queue
from asynctask.testing.contract import open_transport
from asynctask.transport import new_task_id
from asynctask_filesys.layout import TaskName, write_file


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return f"filesys:{tmp_path / 'q'}?lease=2"


def _live(tmp_path: Path) -> list[str]:
    live = tmp_path / "q" / ".status" / "live"
    return sorted(os.listdir(live)) if live.is_dir() else []


def test_a_tracked_batch_submit_writes_no_record_and_reads_queued(uri, tmp_path):
    """Failed before the change with ``.status/live`` holding one record a task (the
    second create a task that kept batches at 0.35x of the raw loop)."""
    queue = unique_queue()
    with open_transport(uri) as t:
        # Given a tracked batch, a delayed task and a prioritised one
        before = time.time()
        ids = t.submit_tasks(queue, [{"n": i} for i in range(5)])
        later = t.submit_task(queue, {}, delay=30)
        urgent = t.submit_task(queue, {}, priority=7)
        # Then no record was written for any of them
        assert _live(tmp_path) == []
        # And each reads as it waits, from its file
        for task_id in ids:
            st = t.status(task_id)
            assert (st.state, st.queue, st.attempts) == ("queued", queue, 0)
            assert before - 1 <= st.submitted_at <= time.time() + 1
            assert st.started_at is None and st.finished_at is None
        assert t.status(later).state == "delayed"
        assert t.status(urgent).state == "queued"
        # And they are taken in the order they always were
        assert [w.id for w in t.peek(queue, limit=10)] == [urgent, *ids]


def test_a_waiting_task_is_started_run_and_succeeds_with_its_record_made_at_start(uri, tmp_path):
    queue = unique_queue()
    with open_transport(uri) as t, t.consumer(queue) as consumer:
        # Given a task submitted without a record
        task_id = t.submit_task(queue, {})
        submitted = t.status(task_id).submitted_at
        # When a worker takes it, before it starts it still reads queued
        delivery = consumer.reserve(timeout=5)
        assert delivery.id == task_id
        assert t.status(task_id).state == "queued"
        # When it starts, its record is made: running, its submission time kept
        assert consumer.start(delivery) == "run"
        assert _live(tmp_path) == [task_id]
        st = t.status(task_id)
        assert (st.state, st.attempts, st.submitted_at) == ("running", 1, submitted)
        # And it succeeds as every task does
        consumer.ack(delivery)
        st = t.status(task_id)
        assert (st.state, st.attempts) == ("succeeded", 1)
        assert st.submitted_at <= st.started_at <= st.finished_at


def test_cancel_of_a_waiting_task_removes_its_file_and_wakes_its_waiter(uri, tmp_path):
    queue = unique_queue()
    with open_transport(uri) as t, t.consumer(queue) as consumer:
        # Given a waiting task and somebody waiting for it
        task_id = t.submit_task(queue, {})
        seen = []
        waiter = threading.Thread(target=lambda: seen.append(t.wait(task_id, timeout=5)))
        waiter.start()
        time.sleep(0.2)
        # When it is cancelled
        begun = time.monotonic()
        assert t.cancel(task_id) is True
        waiter.join()
        # Then the waiter woke at once (inotify, not the 1 s fallback), it reads
        # cancelled, its file is gone and nobody runs it
        assert time.monotonic() - begun < 0.5
        assert seen[0].state == "cancelled"
        assert t.status(task_id).state == "cancelled"
        assert t.queue_stats(queue).ready == 0
        assert consumer.reserve(timeout=0.2) is None
        assert t.cancel(task_id) is False


def test_cancel_of_a_taken_task_not_yet_started_drops_it_at_its_start(uri, tmp_path):
    """A claim (a rename) took the file before the cancel could remove it: the cancel's
    record stays in ``live/``, where the start's exclusive create finds it."""
    queue = unique_queue()
    with open_transport(uri) as t, t.consumer(queue) as consumer:
        task_id = t.submit_task(queue, {})
        delivery = consumer.reserve(timeout=5)
        assert t.cancel(task_id) is True
        assert t.status(task_id).state == "cancelled"
        # When its worker starts it, it is dropped, and its record goes to done/
        assert consumer.start(delivery) == "cancelled"
        assert _live(tmp_path) == []
        assert t.status(task_id).state == "cancelled"
        assert t.queue_stats(queue).in_flight == 0


def test_a_waiter_of_a_waiting_task_is_woken_by_its_start_and_success(uri):
    queue = unique_queue()
    with open_transport(uri) as t, t.consumer(queue) as consumer:
        task_id = t.submit_task(queue, {})
        seen = []
        waiter = threading.Thread(target=lambda: seen.append(t.wait(task_id, timeout=5)))
        waiter.start()
        time.sleep(0.2)
        begun = time.monotonic()
        delivery = consumer.reserve(timeout=5)
        assert consumer.start(delivery) == "run"
        consumer.ack(delivery)
        waiter.join()
        assert seen[0].state == "succeeded"
        assert time.monotonic() - begun < 0.5  # woken by inotify, not its 1 s fallback


def test_a_waiting_task_past_its_expiry_reads_expired_and_never_runs(uri):
    queue = unique_queue()
    with open_transport(uri) as t, t.consumer(queue) as consumer:
        task_id = t.submit_task(queue, {}, expires=0.3)
        assert t.status(task_id).state == "queued"
        begun = time.monotonic()
        assert t.wait(task_id, timeout=5).state == "expired"
        assert time.monotonic() - begun < 0.9
        delivery = consumer.reserve(timeout=5)
        assert consumer.start(delivery) == "expired"
        assert t.status(task_id).state == "expired"


def test_taken_out_by_get_task_or_purge_a_waiting_task_is_gone(uri):
    queue = unique_queue()
    with open_transport(uri) as t:
        first, second = t.submit_tasks(queue, [{"n": 1}, {"n": 2}])
        assert t.get_task(queue) == {"n": 1}
        assert t.status(first) is None
        assert t.purge(queue) == 1
        assert t.status(second) is None


def test_a_queue_written_by_the_previous_layout_is_still_served(uri, tmp_path):
    """The previous code wrote a ``live/`` record a task at submit, then its file, under
    the core's 32-hex ids, which name no file: such a queue is read, cancelled, waited
    for and run as before."""
    queue = unique_queue()
    with open_transport(uri) as t:
        # Given a queue as the previous code left it: records, then files (its _put)
        store = t.state()
        ids = [new_task_id() for _ in range(3)]
        assert store.submitted(queue, ids, 0, NO_OPTIONS) == ids
        paths = t.ensure_queue(queue)
        for n, task_id in enumerate(ids):
            name = TaskName(time.time_ns() + n, task_id, 0, True).format()
            write_file(os.path.join(paths.tmp, name), b'{"n": %d}' % n, 0o600, True)
            os.rename(os.path.join(paths.tmp, name), os.path.join(paths.ready, name))
        assert _live(tmp_path) == sorted(ids)
        # Then each reads queued, one can be cancelled, and the others run to the end
        assert [t.status(i).state for i in ids] == ["queued"] * 3
        assert t.cancel(ids[1]) is True
        with t.consumer(queue) as consumer:
            for expected in ids:
                delivery = consumer.reserve(timeout=5)
                assert delivery.id == expected
                if expected == ids[1]:  # the cancelled one's start drops it, never run
                    assert consumer.start(delivery) == "cancelled"
                    continue
                assert consumer.start(delivery) == "run"
                assert t.status(expected).state == "running"
                consumer.ack(delivery)
        assert [t.wait(i, timeout=5).state for i in ids] == [
            "succeeded",
            "cancelled",
            "succeeded",
        ]


def test_record_at_submit_keeps_the_previous_layout(tmp_path):
    """``record_at=submit``: a record a task at submit (a cheaper start: the tracked
    drain's mark appends, where ``record_at=start`` creates the record)."""
    queue = unique_queue()
    with open_transport(f"filesys:{tmp_path / 'q'}?lease=2&record_at=submit") as t:
        ids = t.submit_tasks(queue, [{}, {}])
        assert _live(tmp_path) == sorted(ids)
        assert all("__" not in i for i in ids)
        with t.consumer(queue) as consumer:
            delivery = consumer.reserve(timeout=5)
            assert consumer.start(delivery) == "run"
            consumer.ack(delivery)
        assert [t.status(i).state for i in ids] == ["succeeded", "queued"]
