"""Task statuses on ``filesys:`` (DESIGN.md section 6), through its consumer directly.

The shared ``StatusContract`` runs the same stories under a real worker; these tests pin
what is particular to the record files: the hot path, the folders, hostile records.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import threading
import time
import weakref
from collections import Counter
from pathlib import Path

import pytest

from asynctask.runner import LoopOptions, run_loop
from asynctask.status import StatusNotTracked
from asynctask.testing import unique_queue
from asynctask.testing.contract import open_transport
from asynctask.transport import Delivery
from asynctask.worker import AsyncTaskWorker
from asynctask_filesys.layout import bumped


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return f"filesys:{tmp_path / 'q'}?lease=2"


def _run_one(consumer, result_json: str | None = None):
    delivery = consumer.reserve(timeout=5)
    assert delivery is not None
    assert consumer.start(delivery) == "run"
    consumer.ack(delivery, result_json)
    return delivery


def test_a_task_goes_queued_running_succeeded_with_its_result(uri):
    queue = unique_queue()
    with open_transport(uri) as t, t.consumer(queue) as consumer:
        # Given a submitted task
        tid = t.submit_task(queue, {"n": 1})
        st = t.status(tid)
        assert st is not None
        assert (st.state, st.attempts, st.queue) == ("queued", 0, queue)
        # When a worker starts it, then it is running
        delivery = consumer.reserve(timeout=5)
        assert consumer.start(delivery) == "run"
        st = t.status(tid)
        assert st.state == "running"
        assert st.attempts == 1
        assert st.started_at is not None
        # And when it returns a value, that is its result
        consumer.ack(delivery, '{"sum": [1, 2]}')
        st = t.status(tid)
        assert (st.state, st.result, st.attempts) == ("succeeded", {"sum": [1, 2]}, 1)
        assert st.submitted_at <= st.started_at <= st.finished_at


def test_the_hot_path_success_keeps_its_times_without_writing(uri):
    queue = unique_queue()
    with open_transport(uri) as t, t.consumer(queue) as consumer:
        tid = t.submit_task(queue, {})
        before = time.time()
        _run_one(consumer)
        st = t.status(tid)
        assert (st.state, st.attempts, st.result) == ("succeeded", 1, None)
        assert before - 0.1 <= st.started_at <= st.finished_at <= time.time() + 0.1


@pytest.mark.parametrize("result_json", [None, "null"])
def test_a_success_without_a_result_is_one_journal_line(uri, tmp_path, result_json):
    """A result ``null`` reads as no result, so it takes the hot path too (the bench's
    drain acks with it): the record stays in ``live/`` as submitted plus its mark, which
    names the journal, and the success is a line there. Seen failing for ``"null"``
    before that fix (the record was rewritten), and before the journal (the record was
    moved to ``done/``: a rename, 16-20 us of kernel time)."""
    queue = unique_queue()
    with open_transport(uri) as t, t.consumer(queue) as consumer:
        # Given a submitted task, started by a worker
        tid = t.submit_task(queue, {})
        # When it succeeds with no result
        _run_one(consumer, result_json)
        # Then its record was neither moved nor rewritten: the submit's content and a
        # mark naming the journal, whose line says it succeeded
        status = tmp_path / "q" / ".status"
        body = (status / "live" / tid).read_bytes()
        content, journal = body.split(b"\n")
        assert b'"state":"queued"' in content
        assert (status / "done" / journal.decode()).read_bytes().startswith(f"{tid} ".encode())
        assert not list((status / "done").glob(f"*/{tid}"))
        st = t.status(tid)
        assert (st.state, st.attempts, st.result) == ("succeeded", 1, None)
        assert st.submitted_at <= st.started_at <= st.finished_at <= time.time()


def test_a_journaled_success_is_final_for_cancel(uri):
    queue = unique_queue()
    with open_transport(uri) as t, t.consumer(queue) as consumer:
        # Given a task that succeeded on the hot path (its record still in live/)
        tid = t.submit_task(queue, {})
        _run_one(consumer)
        # When it is cancelled, then it is final already: it stays succeeded
        assert t.cancel(tid) is False
        assert t.status(tid).state == "succeeded"


def test_a_success_after_its_journal_closed_takes_the_rename(uri, tmp_path):
    """A task that runs past its journal's window (or across two rotations) is moved
    to done/ as before: a journal is written only while it is younger than its
    window, so that it is forgotten after its last line is TTL old."""
    queue = unique_queue()
    with open_transport(uri) as t, t.consumer(queue) as consumer:
        # Given a task started, whose journal then closed
        tid, delivery = _started(t, consumer, queue)
        t.state()._journal.close()
        # When it succeeds, then its record moved to done/
        consumer.ack(delivery)
        assert list((tmp_path / "q" / ".status" / "done").glob(f"*/{tid}"))
        assert t.status(tid).state == "succeeded"


def test_retry_then_fail_then_requeue(uri):
    queue = unique_queue()
    with open_transport(uri) as t, t.consumer(queue) as consumer:
        tid, delivery = _started(t, consumer, queue)
        consumer.retry(delivery, 0, "ValueError: first")
        st = t.status(tid)
        assert (st.state, st.attempts, st.error) == ("retrying", 1, "ValueError: first")
        delivery = consumer.reserve(timeout=5)
        assert consumer.start(delivery) == "run"
        assert (t.status(tid).state, t.status(tid).attempts) == ("running", 2)
        consumer.fail(delivery, "ValueError: second")
        st = t.status(tid)
        assert (st.state, st.attempts, st.error) == ("failed", 2, "ValueError: second")
        # a failed status lives as long as its failed record; a requeue queues it again
        assert t.requeue_failed(queue, [tid]) == 1
        assert t.status(tid).state == "queued"
        _run_one(consumer)
        assert t.status(tid).state == "succeeded"


def test_a_cancelled_waiting_task_never_runs_nor_fails(uri):
    queue = unique_queue()
    with open_transport(uri) as t, t.consumer(queue) as consumer:
        tid = t.submit_task(queue, {}, unique_key="k")
        assert t.cancel(tid) is True
        assert t.cancel(tid) is False  # final already
        assert t.status(tid).state == "cancelled"
        delivery = consumer.reserve(timeout=5)
        assert consumer.start(delivery) == "cancelled"
        assert consumer.reserve(timeout=0) is None
        assert t.failed_tasks(queue) == []
        # the key was freed by the cancel
        assert t.submit_task(queue, {}, unique_key="k") != tid


def test_a_cancelled_running_task_keeps_cancelled_when_it_returns(uri):
    queue = unique_queue()
    with open_transport(uri) as t, t.consumer(queue) as consumer:
        tid, delivery = _started(t, consumer, queue)
        assert t.cancel(tid) is True
        consumer.ack(delivery, '"late"')
        st = t.status(tid)
        assert (st.state, st.result) == ("cancelled", None)


def test_a_task_not_started_before_it_expires_never_runs(uri):
    queue = unique_queue()
    with open_transport(uri) as t, t.consumer(queue) as consumer:
        tid = t.submit_task(queue, {}, expires=0.2)
        keep = t.submit_task(queue, {}, expires=60)
        time.sleep(0.3)
        assert t.status(tid).state == "expired"
        delivery = consumer.reserve(timeout=5)
        assert delivery.id == tid
        assert consumer.start(delivery) == "expired"
        assert t.status(tid).state == "expired"
        assert t.failed_tasks(queue) == []
        _run_one(consumer)
        assert t.status(keep).state == "succeeded"


def test_a_delayed_task_reads_delayed_until_due(uri):
    queue = unique_queue()
    with open_transport(uri) as t:
        tid = t.submit_task(queue, {}, delay=0.3)
        assert t.status(tid).state == "delayed"
        time.sleep(0.35)
        assert t.status(tid).state == "queued"


def test_priorities_come_out_highest_first_fifo_within(uri):
    queue = unique_queue()
    with open_transport(uri) as t, t.consumer(queue) as consumer:
        order = [0, 5, 9, 0, 9, 5, 0]
        ids = [t.submit_task(queue, {"i": i}, priority=p) for i, p in enumerate(order)]
        taken = []
        for _ in order:
            delivery = consumer.reserve(timeout=5)
            taken.append(delivery.id)
            consumer.ack(delivery)
        want = [ids[i] for i in (2, 4, 1, 5, 0, 3, 6)]
        assert taken == want


def _blocked_waiter(uri: str, tid: str, woke: list[float]) -> threading.Thread:
    """A thread waiting for ``tid`` to succeed on a transport of its own (fallback poll
    10 s: only a wake-up is in time), blocked by the time this returns; it notes in
    ``woke`` when its ``wait`` returned."""

    def waiter() -> None:
        with open_transport(uri) as other:
            other.state().fallback_poll = 10.0
            assert other.wait(tid, timeout=20).state == "succeeded"
            woke.append(time.monotonic())

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.3)  # the waiter is blocked by now
    return thread


@pytest.fixture
def slow_poll_uri(tmp_path: Path) -> str:
    """The folder polled every 10 s where inotify is missing: a waiter that is not
    woken by inotify (it sleeps ``poll``, not ``fallback_poll``) misses the 1 s bound."""
    return f"filesys:{tmp_path / 'q'}?lease=2&poll=10"


@pytest.mark.parametrize("waiter_blocks", ["after the start", "before the start"])
def test_wait_is_woken_by_inotify_not_the_fallback_poll(slow_poll_uri, waiter_blocks):
    """A waiter blocked before the task starts: the start's mark wakes it to watch the
    journal the mark names, whose line then wakes it (the record never leaves live/).
    Both fail without inotify (checked with ``RecordWatch`` never using it: woke 9.5 s
    after the ack, the folder's 10 s ``poll``)."""
    uri = slow_poll_uri
    queue = unique_queue()
    with open_transport(uri) as t, t.consumer(queue) as consumer:
        t.state().fallback_poll = 10.0  # only a wake-up can make it in time
        tid = t.submit_task(queue, {})
        woke: list[float] = []
        if waiter_blocks == "before the start":
            thread = _blocked_waiter(uri, tid, woke)
        delivery = consumer.reserve(timeout=5)
        consumer.start(delivery)
        if waiter_blocks == "after the start":
            thread = _blocked_waiter(uri, tid, woke)
        else:
            time.sleep(0.3)  # it follows the journal by now
        acked = time.monotonic()
        consumer.ack(delivery)
        thread.join(20)
        assert woke
        assert woke[0] - acked < 1.0


def test_wait_returns_without_waiting_for_its_inotify_to_close(uri, monkeypatch):
    """Fails if ``wait`` closes its inotify instance before returning: closing one takes
    the kernel 0.05-16 ms (an RCU grace period), measured on this machine, and made the
    bench's wait row read 15 ms where the record moved 0.3 ms after the ack. Checked
    with a close slowed to 0.5 s: ``wait`` took that long before the pool."""
    from inotify_simple import INotify

    real_close = INotify.close

    def slow_close(self: INotify) -> None:
        time.sleep(0.5)
        real_close(self)

    monkeypatch.setattr(INotify, "close", slow_close)
    queue = unique_queue()
    with open_transport(uri) as t, t.consumer(queue) as consumer:
        for n in range(3):  # the first wait makes the instance, the next ones reuse it
            tid = t.submit_task(queue, {"n": n})
            delivery = consumer.reserve(timeout=5)
            consumer.start(delivery)
            woke: list[float] = []

            def waiter(task_id: str = tid, woke: list[float] = woke) -> None:
                assert t.wait(task_id, timeout=5).state == "succeeded"
                woke.append(time.monotonic())

            thread = threading.Thread(target=waiter)
            thread.start()
            time.sleep(0.2)  # the waiter is blocked on its inotify by now
            acked = time.monotonic()
            consumer.ack(delivery)
            thread.join(5)
            assert woke and woke[0] - acked < 0.3, woke and woke[0] - acked


def test_wait_times_out_with_the_builtin_error(uri):
    queue = unique_queue()
    with open_transport(uri) as t:
        tid = t.submit_task(queue, {})
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            t.wait(tid, timeout=0.2)
        assert time.monotonic() - began < 1.5
        with pytest.raises(LookupError):
            t.wait("0" * 32, timeout=0.2)


def _submit_unique(uri: str, queue: str, barrier, report) -> None:
    with open_transport(uri) as t:
        t.submit_task(unique_queue(), {})  # warm up: folders made, modules imported
        barrier.wait(30)
        report.put([t.submit_task(queue, {}, unique_key="only-one") for _ in range(100)])


def test_a_unique_key_makes_one_task_across_processes(uri, tmp_path):
    queue = unique_queue()
    ctx = multiprocessing.get_context("spawn")
    barrier, report = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_submit_unique, args=(uri, queue, barrier, report)) for _ in "ab"]
    for proc in procs:
        proc.start()
    results = [report.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(10)
    ids = {tid for batch in results for tid in batch}
    assert len(ids) == 1
    with open_transport(uri) as t, t.consumer(queue) as consumer:
        assert t.queue_stats(queue).ready == 1
        _run_one(consumer)
        # final: the key is free again
        again = t.submit_task(queue, {}, unique_key="only-one")
        assert again not in ids
        assert t.submit_task(queue, {}, unique_key="only-one") == again


def test_a_final_status_is_forgotten_after_the_ttl_by_whole_folders(uri, tmp_path):
    queue = unique_queue()
    with open_transport(uri) as t, t.consumer(queue) as consumer:
        t.status_ttl = 1.0
        tid = t.submit_task(queue, {})
        _run_one(consumer)
        assert t.status(tid).state == "succeeded"
        # (its journal lives in the done/ folder after the window it takes lines in)
        time.sleep(3.2)
        assert t.status(tid) is None
        # the next task to start opens a new journal and removes the old folders, with
        # the live/ records of the successes their journals list
        t.submit_task(queue, {})
        _run_one(consumer)
        done = tmp_path / "q" / ".status" / "done"
        assert len(os.listdir(done)) == 1
        assert not (tmp_path / "q" / ".status" / "live" / tid).exists()


def test_a_planted_symlink_record_is_not_followed(uri, tmp_path):
    queue = unique_queue()
    with open_transport(uri) as t:
        # (a keyed submit writes its record at submit; others have none until started)
        tid = t.submit_task(queue, {}, unique_key="k")
        secret = tmp_path / "secret"
        secret.write_text('{"state": "succeeded", "result": "secret"}')
        live = tmp_path / "q" / ".status" / "live" / tid
        live.unlink()
        live.symlink_to(secret)
        assert t.status(tid) is None
        assert t.status("../../secret") is None


def test_with_tracking_off_the_consumer_writes_no_status(uri):
    queue = unique_queue()
    with open_transport(uri) as t, t.consumer(queue) as consumer:
        # (the run loop calls no start() for a worker with track_status = False)
        consumer.tracking = False
        tid = t.submit_task(queue, {})
        keyed = t.submit_task(queue, {}, unique_key="k")
        for _ in range(2):
            consumer.ack(consumer.reserve(timeout=5), '"ignored"')
        assert t.status(tid).state == "queued"
        # a unique key is freed all the same (it would be held for good)
        assert t.submit_task(queue, {}, unique_key="k") != keyed


def test_a_record_lock_held_by_somebody_else_delays_but_never_stalls(uri, tmp_path):
    # Given another user of the shared folder holding the lock of a record for good
    queue = unique_queue()
    with open_transport(uri) as t:
        tid = t.submit_task(queue, {}, unique_key="k")  # (its record written at submit)
        fd = os.open(tmp_path / "q" / ".status" / "live" / tid, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # When the task is cancelled, then it still is, within the lock's wait
            began = time.monotonic()
            assert t.cancel(tid) is True
            assert time.monotonic() - began < 5
            assert t.status(tid).state == "cancelled"
        finally:
            os.close(fd)


#: the ``os`` calls that touch the file system (or an open file) on a consumer's path
_FILE_CALLS = (
    "open", "close", "read", "pread", "write", "pwrite", "ftruncate", "fstat", "stat",
    "lstat", "rename", "replace", "unlink", "link", "utime", "listdir", "scandir",
    "mkdir", "fchmod", "fsync",
)  # fmt: skip


class _FileCalls:
    """Counts, by name, the file-system calls made through ``os`` while switched on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.on = False
        self.seen: list[str] = []
        for name in _FILE_CALLS:
            monkeypatch.setattr(os, name, self._counted(name, getattr(os, name)))

    def _counted(self, name, call):
        def counted(*args, **kwargs):
            if self.on:
                self.seen.append(name)
            return call(*args, **kwargs)

        return counted

    def during(self, action):
        self.seen, self.on = [], True
        try:
            action()
        finally:
            self.on = False
        return sorted(self.seen)


def test_tracking_costs_a_task_one_write_to_start_and_one_rename_to_succeed(uri, monkeypatch):
    """The tracking cost of the bench's drain, in file-system calls (which the machine's
    load does not move): a start is the mark (open, write, close: no fstat, no lock, no
    read), a plain success one rename more than the untracked ack. Seen failing with an
    ``fstat`` put back in the mark (a quarter of its cost, issue 16)."""
    queue = unique_queue()
    with open_transport(uri) as t:
        # Given two tasks, taken by a tracking consumer (whose done/ folder of the hour
        # is open: one task went through already) and by one that keeps no status
        t.submit_task(queue, {})
        tracked_id = t.submit_task(queue, {})
        t.state().set_tracking(queue, False)  # (as its workers' run loop would say)
        t._note_tracking(queue, False)
        untracked_id = t.submit_task(queue, {})  # no record: nothing to retire
        calls = _FileCalls(monkeypatch)
        with t.consumer(queue) as tracking, t.consumer(queue) as plain:
            plain.tracking = False
            _run_one(tracking)
            first = tracking.reserve(timeout=5)
            second = plain.reserve(timeout=5)
            assert (first.id, second.id) == (tracked_id, untracked_id)
            # When the tracked one starts, it costs the mark alone
            assert calls.during(lambda: tracking.start(first)) == ["close", "open", "write"]
            # And when each succeeds (the run loop acks with no result, or null)
            untracked = calls.during(lambda: plain.ack(second))
            tracked = calls.during(lambda: tracking.ack(first, "null"))
        # Then tracking added one write, the journal's line (the record stays)
        assert tracked == sorted([*untracked, "write"])
        assert t.status(tracked_id).state == "succeeded"


def _batch_calls(uri: str, monkeypatch: pytest.MonkeyPatch, n: int) -> Counter[str]:
    """The file-system calls of one tracked ``submit_tasks`` of ``n`` tasks."""
    queue = unique_queue()
    with open_transport(uri) as t:
        t.submit_tasks(queue, [{}])  # (the queue's and the store's folders made)
        calls = _FileCalls(monkeypatch)
        seen = calls.during(lambda: t.submit_tasks(queue, [{"n": i} for i in range(n)]))
        assert t.queue_stats(queue).ready == n + 1
    return Counter(seen)


def test_a_batch_submit_costs_a_task_the_raw_loops_calls(uri, monkeypatch):
    """The bench's batch submit in file-system calls (issue 20; wall time on this shared
    disk moved 0.27x-0.77x of the raw loop with the same code): a task is its file
    (open, write, fsync, close, rename), as in the raw loop, a batch one fsync of
    ``ready/``; no status record (its status is read from its file, ``queued``).
    Failed before with the record's open, write and close a task (a second create,
    each a journaled directory update), and before that with an ``fchmod`` after each
    create where the umask narrowed nothing."""
    n = 50
    counts = _batch_calls(uri, monkeypatch, n)
    assert counts == {
        "open": n + 1,
        "write": n,
        "close": n + 1,
        "fsync": n + 1,
        "rename": n,
    }


def test_a_batch_submit_still_sets_a_mode_the_umask_narrows(tmp_path, monkeypatch):
    """``mode`` holds whatever the umask (README): with ``mode=0660`` under a umask of
    077 each created file gets its ``fchmod``, and ends 0660."""
    uri = f"filesys:{tmp_path / 'q'}?lease=2&mode=0660"
    old = os.umask(0o077)
    try:
        counts = _batch_calls(uri, monkeypatch, 10)
    finally:
        os.umask(old)
    assert counts["fchmod"] == 10
    files = [p for p in (tmp_path / "q").rglob("*") if p.is_file() and "ready" in p.parts]
    live = tmp_path / "q" / ".status" / "live"
    files += list(live.iterdir()) if live.is_dir() else []
    assert len(files) == 11
    assert {p.stat().st_mode & 0o777 for p in files} == {0o660}


def test_a_reserve_at_depth_costs_what_it_costs_at_depth_three(tmp_path, monkeypatch):
    """The bench's depth row in file-system calls (issue 20: 0.35x in one run, 0.86x
    and 1.14x in others): once a consumer has listed its queue, a reserve+ack with
    3,000 waiting makes the same calls as with 3 (no listing, no stat of the queue a
    task). A guard, not a fix: it passed before; with ``Folder.sync`` listing at every
    look it fails (a ``scandir`` a reserve)."""
    uri = f"filesys:{tmp_path / 'q'}?lease=2&fsync=false"
    shallow, deep = unique_queue(), unique_queue()
    with open_transport(uri) as t:
        t.submit_tasks(shallow, [{"n": n} for n in range(3)])
        for start in range(0, 3000, 1000):
            t.submit_tasks(deep, [{"n": n} for n in range(start, start + 1000)])
        calls = _FileCalls(monkeypatch)
        seen = {}
        for queue in (shallow, deep):
            with t.consumer(queue) as consumer:
                consumer.ack(consumer.reserve(timeout=5))  # (its one listing)

                def two(consumer=consumer) -> None:
                    for _ in range(2):
                        consumer.ack(consumer.reserve(timeout=5))

                seen[queue] = calls.during(two)
        assert "scandir" not in seen[deep] and "listdir" not in seen[deep]
        assert seen[deep] == seen[shallow]


class _Quiet(AsyncTaskWorker):
    """Succeeds, or fails for good on ``{"fail": true}`` (no retries)."""

    name = "asynctask_filesys_untracked_leftover"
    max_retries = 0

    def process(self, payload):
        if payload.get("fail"):
            raise RuntimeError("boom")


def test_records_written_before_a_queue_went_untracked_are_forgotten(uri, tmp_path):
    """Issue 16: every record is forgotten, the ones written at submit before the
    queue's workers turned ``track_status`` off too. Fails if a worker keeping no status
    leaves them in ``live/`` for good (before the fix: two of the three records, all
    ``queued``, still read long after the TTL; the keyed one was dropped)."""
    queue = unique_queue()
    with open_transport(uri) as t:
        # Given tasks submitted while the queue was tracked (their records written)
        t.status_ttl = 1.0
        store = t.state()
        ok, bad = t.submit_task(queue, {}), t.submit_task(queue, {"fail": True})
        keyed = t.submit_task(queue, {}, unique_key="k")
        ids = [ok, bad, keyed]
        # When its workers now keep no status and run them
        run_loop(_Quiet(), t, queue, LoopOptions(max_tasks=3, track_status=False))
        assert t.queue_stats(queue).ready == 0
        # Then status() still says the queue keeps none (not "never submitted"), and
        # the unique key is free again
        for task_id in ids:
            with pytest.raises(StatusNotTracked, match="track_status"):
                t.status(task_id)
        again = t.submit_task(queue, {}, unique_key="k")
        assert again != keyed
        # And the store keeps nothing for them after the TTL (the raw store: status()
        # refuses a non-final one of an untracked queue, which hid the leak)
        deadline = time.monotonic() + 10
        while store.statuses(ids) != [None] * 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert store.statuses(ids) == [None] * 3
        assert os.listdir(tmp_path / "q" / ".status" / "live") == [again]


def test_an_untracked_task_costs_its_claim_one_read_and_its_unlink(uri, monkeypatch):
    """The untracked drain's file-system calls a task (issue 12): the claim's rename,
    the file read with open, fstat, ONE read and close, the ack's unlink. Seen failing
    before: an ``lstat`` before the open, and a second ``read`` to see the end."""
    queue = unique_queue()
    with open_transport(uri) as t:
        # Given a queue of two tasks and a consumer keeping no status, past its first
        t.state().set_tracking(queue, False)
        t._note_tracking(queue, False)
        t.submit_tasks(queue, [{"n": 1}, {"n": 2, "pad": "x" * 70000}])
        calls = _FileCalls(monkeypatch)
        with t.consumer(queue) as consumer:
            consumer.tracking = False
            consumer.ack(consumer.reserve(timeout=5))
            # When it takes and acks the next task (bigger than one 64 KiB read)
            took: list = []
            taking = calls.during(lambda: took.append(consumer.reserve(timeout=5)))
            acking = calls.during(lambda: consumer.ack(took[0]))
        # Then that is all it did
        assert took[0].payload["n"] == 2
        assert taking == ["close", "fstat", "open", "read", "rename"]
        assert acking == ["unlink"]


def test_a_success_is_journaled_only_after_its_task_file_is_gone(uri, monkeypatch):
    """At-least-once: a crash before the task file's removal runs the task again, and
    its status must not say succeeded meanwhile (the journal line comes after the
    removal). Seen failing with the line written first."""
    queue = unique_queue()
    with open_transport(uri) as t, t.consumer(queue) as consumer:
        # Given a started task whose file cannot be removed (the worker "crashes" there)
        tid, delivery = _started(t, consumer, queue)
        real_unlink = os.unlink

        def crash(path, *args, **kwargs):
            if path.endswith(".json"):
                raise KeyboardInterrupt("crashed before the task file's removal")
            return real_unlink(path, *args, **kwargs)

        monkeypatch.setattr(os, "unlink", crash)
        # When its success is acked, then it crashes, and the task still reads running
        with pytest.raises(KeyboardInterrupt):
            consumer.ack(delivery)
        monkeypatch.setattr(os, "unlink", real_unlink)
        assert t.status(tid).state == "running"


def test_a_result_written_over_lines_is_kept_whole(uri):
    """A record's content is one line (a start's mark begins with a newline), so a
    result given as indented JSON is kept on one line. Seen failing without that (the
    record read as not JSON, and the status was lost)."""
    queue = unique_queue()
    with open_transport(uri) as t, t.consumer(queue) as consumer:
        tid = t.submit_task(queue, {})
        _run_one(consumer, '{\n  "sum": [1,\n 2]\n}')
        st = t.status(tid)
        assert (st.state, st.result) == ("succeeded", {"sum": [1, 2]})


def test_a_success_journaled_before_a_cancel_writes_wins(uri, monkeypatch):
    """The first of a cancel and a success wins. Here the cancel finds the record live
    (no journal line yet), the worker then journals its success, and only then does
    the cancel write its record: the task succeeded first, so the cancel must answer
    False and the status stay succeeded. Seen failing before the fix (the cancel
    overwrote the journaled success: True, and the status read cancelled)."""
    queue = unique_queue()
    with open_transport(uri) as t, t.consumer(queue) as consumer:
        # Given a task started on the hot path (its mark names the worker's journal)
        tid, delivery = _started(t, consumer, queue)
        store = t.state()
        real_locate = store._locate
        acked: list[bool] = []

        def locate_then_succeed(task_id):
            found = real_locate(task_id)
            if not acked:  # the worker's success lands right after the cancel looked
                acked.append(True)
                consumer.ack(delivery)
            return found

        monkeypatch.setattr(store, "_locate", locate_then_succeed)
        # When a cancel races it, reading the record before the success line
        cancelled = t.cancel(tid)
        monkeypatch.undo()
        # Then the success, written first, stands
        assert acked
        assert cancelled is False
        assert t.status(tid).state == "succeeded"


def test_a_cancel_before_a_journaled_success_wins(uri):
    """The other order: a cancel of a running task comes first, the worker's success
    line after; the task stays cancelled (its record left live/ for done/). A guard
    of the fix above (it passes before and after it)."""
    queue = unique_queue()
    with open_transport(uri) as t, t.consumer(queue) as consumer:
        tid, delivery = _started(t, consumer, queue)
        assert t.cancel(tid) is True
        consumer.ack(delivery)
        assert t.status(tid).state == "cancelled"


def test_a_recovered_task_acked_meanwhile_stays_succeeded(uri, tmp_path):
    """A worker taken for dead has its task file moved back to ready/ (one attempt
    more, as ``recover_dead`` does) just before it acks: its ack journals the success,
    and the recovered copy's start must not make the task read running again: a final
    status stays final (as before the journal, when the record was in done/). Seen
    failing before the fix (succeeded -> running -> succeeded)."""
    queue = unique_queue()
    with open_transport(uri) as t, t.consumer(queue) as first:
        # Given a task started by a worker, and taken back meanwhile (its worker was
        # taken for dead)
        tid, delivery = _started_then_taken_back(t, first, queue, tmp_path)
        # When that worker acks it after all, then it succeeded
        first.ack(delivery)
        assert t.status(tid).state == "succeeded"
        # And when another worker takes the recovered copy, the status stays succeeded
        with open_transport(uri) as other, other.consumer(queue) as second:
            again = second.reserve(timeout=5)
            assert again is not None and again.id == tid and again.attempt == 2
            second.start(again)
            assert t.status(tid).state == "succeeded"
            second.ack(again)
        st = t.status(tid)
        assert (st.state, st.attempts) == ("succeeded", 1)


def _started(t, consumer, queue: str) -> tuple[str, Delivery]:
    """Submit a task and start it with ``consumer``: its id and delivery."""
    tid = t.submit_task(queue, {})
    delivery = consumer.reserve(timeout=5)
    assert consumer.start(delivery) == "run"
    return tid, delivery


def _started_then_taken_back(t, first, queue: str, tmp_path) -> tuple[str, Delivery]:
    """Submit a task and start it with ``first``, then move its file back to ready/
    with one attempt more, as ``recover_dead`` does for a worker taken for dead: the
    task's id and ``first``'s delivery of it."""
    tid, delivery = _started(t, first, queue)
    claimed = first._held[tid]
    os.rename(claimed, tmp_path / "q" / queue / "ready" / bumped(os.path.basename(claimed)))
    return tid, delivery


def _settle_copy(consumer, delivery, how: str) -> None:
    """A recovered copy's outcome: a failure, a retry, a result or a plain success."""
    if how == "fail":
        consumer.fail(delivery, "ValueError: the copy")
    elif how == "retry":
        consumer.retry(delivery, 0, "ValueError: the copy")
    elif how == "result":
        consumer.ack(delivery, '{"by": "the copy"}')
    else:
        consumer.ack(delivery)


@pytest.mark.parametrize("copy_starts", ["after the success", "before the success"])
@pytest.mark.parametrize("how", ["fail", "retry", "result", "plain"])
def test_a_journaled_success_stays_final_whatever_its_recovered_copy_does(
    uri, tmp_path, copy_starts, how
):
    """Success is final (issue 16): a worker taken for dead journals its success, and
    the recovered copy of its task, started before or after that success, then fails,
    retries or returns a result: none of it may overwrite the success. Seen failing
    before the fix when the copy started first: its start rewrote the record without
    the mark naming the first worker's journal, so the success was never seen and the
    status read what the copy did (failed, retrying, its result)."""
    queue = unique_queue()
    with open_transport(uri) as t, t.consumer(queue) as first:
        # Given a task started by a worker, then taken back (its worker taken for dead)
        tid, delivery = _started_then_taken_back(t, first, queue, tmp_path)
        with open_transport(uri) as other, other.consumer(queue) as second:
            copy = second.reserve(timeout=5)
            assert copy is not None and copy.id == tid and copy.attempt == 2
            # When the first worker journals its success, before or after the copy starts
            if copy_starts == "before the success":
                assert second.start(copy) == "run"
                assert t.status(tid).state == "running"
                first.ack(delivery)
            else:
                first.ack(delivery)
                assert second.start(copy) == "run"
            assert t.status(tid).state == "succeeded"
            # And the copy settles its way afterwards
            _settle_copy(second, copy, how)
        # Then the task still reads succeeded, with nothing of what the copy did
        st = t.status(tid)
        assert (st.state, st.error, st.result) == ("succeeded", None, None)
        assert st.attempts == (2 if copy_starts == "before the success" else 1)
        assert t.wait(tid, timeout=1).state == "succeeded"


@pytest.mark.parametrize("how", ["fail", "result"])
def test_a_recovered_copys_final_outcome_first_stays_final(uri, tmp_path, how):
    """The other order: the recovered copy ends the task first (failed, or succeeded
    with its result), and the first worker's success line comes after it: the first
    final outcome stands, as it did when a success was the record's rename (a guard of
    the fix above: the copy's final outcome writes its own line first in the journal
    its record names, so the success line after it is ignored)."""
    queue = unique_queue()
    with open_transport(uri) as t, t.consumer(queue) as first:
        tid, delivery = _started_then_taken_back(t, first, queue, tmp_path)
        with open_transport(uri) as other, other.consumer(queue) as second:
            copy = second.reserve(timeout=5)
            assert second.start(copy) == "run"
            # When the copy ends it first, and the first worker's success comes after
            _settle_copy(second, copy, how)
            first.ack(delivery)
        # Then the copy's outcome stands
        st = t.status(tid)
        if how == "fail":
            assert (st.state, st.error) == ("failed", "ValueError: the copy")
        else:
            assert (st.state, st.result) == ("succeeded", {"by": "the copy"})


def test_forgetting_a_journal_keeps_a_record_its_lines_did_not_settle(uri, tmp_path):
    """Forgetting a journal removes the ``live/`` records of the successes it lists,
    and no other: a recovered copy's failure writes its own line there first, and the
    task, requeued from the failed store, is queued again in ``live/`` when that
    journal is forgotten. Failed before (any id in the journal lost its record)."""
    queue = unique_queue()
    with open_transport(uri) as t, t.consumer(queue) as first:
        # Given a task whose recovered copy failed first, its line in the journal
        tid, delivery = _started_then_taken_back(t, first, queue, tmp_path)
        journal = (tmp_path / "q" / ".status" / "live" / tid).read_bytes().split(b"\n")[1]
        with open_transport(uri) as other, other.consumer(queue) as second:
            copy = second.reserve(timeout=5)
            assert second.start(copy) == "run"
            second.fail(copy, "ValueError: the copy")
        first.ack(delivery)
        # And requeued from the failed store
        assert t.requeue_failed(queue, [tid]) == 1
        assert t.status(tid).state == "queued"
        # When that journal is forgotten (its folder past the TTL)
        t.state()._forget_journaled(str(tmp_path / "q" / ".status" / "done" / journal.decode()))
        # Then the requeued task keeps its record
        assert t.status(tid).state == "queued"


def test_a_journal_closed_between_check_and_write_loses_no_line(uri, tmp_path, monkeypatch):
    """A threaded worker: another thread's start may rotate the journals, closing the
    one a success is about to be written to, between the success's check and its
    write. The line must still reach that journal (not fail with EBADF, leaving the
    task running, nor land in a file that reused the descriptor's number). The close
    is made to happen right there, at the success's clock read. Seen failing before
    the fix (EBADF raised by the ack, and the status stuck at running)."""
    import asynctask_filesys.state as state_module

    queue = unique_queue()
    with open_transport(uri) as t, t.consumer(queue) as consumer:
        # Given a task started, assigned to the open journal
        tid, delivery = _started(t, consumer, queue)
        store = t.state()
        journal = weakref.ref(store._journal)  # only the task's assignment may keep it
        other = tmp_path / "unrelated"
        opened: list[int] = []
        real_time = time.time

        class CloseAtTheCheck:
            """``time`` for state.py: its first ``time()`` closes the journal, as a
            rotation in another thread would, and opens an unrelated file."""

            def __getattr__(self, attr):
                return getattr(time, attr)

            def time(self) -> float:
                if not opened:
                    # a rotation: the store lets go of the journal and closes it
                    store._journal = store._previous = None
                    assert journal() is not None, "the started task must hold its journal"
                    journal().close()
                    opened.append(os.open(other, os.O_WRONLY | os.O_CREAT, 0o600))
                return real_time()

        monkeypatch.setattr(state_module, "time", CloseAtTheCheck())
        # When its success is acked while the journal closes
        try:
            consumer.ack(delivery)
        finally:
            monkeypatch.undo()
            for fd in opened:
                os.close(fd)
        # Then nothing went elsewhere, and the task succeeded
        assert opened
        assert other.read_bytes() == b""
        assert t.status(tid).state == "succeeded"


def test_a_task_started_tracked_and_settled_untracked_lets_go_of_its_journal(uri):
    """A task started while its queue was tracked, settled after tracking was switched
    off: its settle never reaches the store, which must still drop the journal the start
    assigned (a journal's file stays open while a task holds it). Failed before: the
    assignment stayed for the life of the process, one open descriptor each."""
    queue = unique_queue()
    with open_transport(uri) as t, t.consumer(queue) as consumer:
        tid, delivery = _started(t, consumer, queue)
        assert tid in t.state()._assigned
        consumer.tracking = False
        consumer.ack(delivery)
        assert tid not in t.state()._assigned


#: a worker process whose one task raises (no retries): it is SIGKILLed at ``point`` of
#: the failure (the OOM killer, the supervisor's kill): ``moved`` right after the task
#: went to the failed store, ``before`` right before it goes there
_KILLED_FAILING = """
import os, signal, sys
from asynctask import AsyncTaskWorker
from asynctask.runner import LoopOptions, run_loop
from asynctask.testing.contract import open_transport
from asynctask_filesys import consumer, queues

uri, state, queue, point = sys.argv[1:5]

def killing(real, after):
    def wrapped(*args, **kwargs):
        if not after:
            os.kill(os.getpid(), signal.SIGKILL)
        real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
    return wrapped

# the move: the transport's own (no asynctask_state), else the consumer's whole fail
if state == "own":
    queues.FilesysBase.to_failed = killing(queues.FilesysBase.to_failed, point == "moved")
else:
    consumer.FilesysConsumer.fail = killing(consumer.FilesysConsumer.fail, point == "moved")

class Raises(AsyncTaskWorker):
    name = "asynctask_filesys_killed_failing"
    max_retries = 0

    def process(self, payload):
        raise ValueError("boom")

with open_transport(uri) as t:
    if state != "own":
        t.state_uri = state
    run_loop(Raises(), t, queue, LoopOptions(halt_when_empty=True))
"""


def _state_of(request, tmp_path: Path, state: str) -> str:
    """The ``asynctask_state`` of a story: ``own`` (none), another filesys folder
    (``apart``), or a key prefix in Redis or a schema in PostgreSQL of the test's own."""
    if state == "own":
        return "own"
    if state == "apart":
        return f"filesys:{tmp_path / 'state'}"
    return request.getfixturevalue(f"{state}_state")


@pytest.mark.parametrize("point", ["moved", "before"])
@pytest.mark.parametrize("state", ["own", "apart", "redis", "pgsql"])
def test_a_worker_killed_as_its_task_fails_leaves_it_failed_or_to_run_again(
    uri, tmp_path, request, state, point
):
    """A worker killed as its task fails (no retries left): right before the move to the
    failed store, the task is still held, given back at its lease's end, run again and
    failed; right after it, the task reads ``failed``: the worker noted where it was
    moving it, and the read finds it there (issue 16, the failed window; ``asynctask
    .status``). Failed before the note, on its own state and apart: the task read
    ``running`` in the failed store for good (``failed`` written first passed this, but
    a waiter woken by it found the failed store empty)."""
    import subprocess
    import sys

    queue = unique_queue()
    state_uri = _state_of(request, tmp_path, state)
    with open_transport(uri) as t:
        if state != "own":
            t.state_uri = state_uri
        tid = t.submit_task(queue, {"n": 1})
        # Given a worker killed at that point of its task's failure
        killed = subprocess.run(
            [sys.executable, "-c", _KILLED_FAILING, uri, state_uri, queue, point], timeout=60
        )
        assert killed.returncode == -9
        # Then the task reads failed, or is still held (its status not final yet)
        st = t.status(tid)
        assert st is not None
        in_store = [f.id for f in t.failed_tasks(queue)]
        if point == "moved":
            assert (st.state, in_store) == ("failed", [tid]), (st, in_store)
            return
        assert in_store == [] and st.state in ("running", "failed"), (st, in_store)
        # When its lease ends and a worker takes it again, then it fails for good
        time.sleep(2.2)
        run_loop(_Raises(), t, queue, LoopOptions(halt_when_empty=True))
        assert t.wait(tid, timeout=5).state == "failed"
        assert [f.id for f in t.failed_tasks(queue)] == [tid]


@pytest.mark.parametrize("state", ["own", "apart", "redis", "pgsql"])
def test_a_waiter_is_woken_when_the_worker_is_killed_after_the_move(uri, tmp_path, request, state):
    """A ``wait`` blocked while the worker of its task is killed between the move to the
    failed store and ``failed`` (nobody writes what would wake it) returns ``failed``
    within the store's fallback poll (1 s here), whatever the store: its own read at the end of a slice
    finds the note and the file, and writes ``failed``. Before, it waited out its
    timeout (the task read ``running`` for good)."""
    import subprocess
    import sys

    queue = unique_queue()
    state_uri = _state_of(request, tmp_path, state)
    with open_transport(uri) as t:
        if state != "own":
            t.state_uri = state_uri
        tid = t.submit_task(queue, {"n": 1})
        # Given a waiter blocked on the task before its worker starts
        seen: list[object] = []

        def waiting() -> None:
            with open_transport(uri) as other:
                if state != "own":
                    other.state_uri = state_uri
                other.state().fallback_poll = 1.0  # (filesys's own; 5 s on redis, pgsql)
                try:
                    seen.append(other.wait(tid, timeout=20))
                except Exception as exc:  # reported by the assertion below
                    seen.append(exc)
                seen.append(time.monotonic())

        waiter = threading.Thread(target=waiting)
        waiter.start()
        time.sleep(0.3)
        # When the worker is killed right after the move, before 'failed'
        killed = subprocess.run(
            [sys.executable, "-c", _KILLED_FAILING, uri, state_uri, queue, "moved"], timeout=60
        )
        died = time.monotonic()
        assert killed.returncode == -9
        waiter.join(timeout=25)
        # Then the waiter returns failed, within a fallback poll of the death
        assert len(seen) == 2, seen
        found, woke = seen
        assert getattr(found, "state", found) == "failed"
        assert woke - died < 2.5, woke - died
        assert [f.id for f in t.failed_tasks(queue)] == [tid]


class _Raises(AsyncTaskWorker):
    name = "asynctask_filesys_raises"
    max_retries = 0

    def process(self, payload):
        raise ValueError("boom")
