"""The report pipe between a child and its supervisor (``asynctask.reports``).

The supervisor must know which tasks a child started before it died, but it need not
know it at once: it reads a busy child's lines in batches, at most every
``ReportReader.read_every`` seconds, instead of waking for each line (which cost as much
CPU as the child's own run loop). The child writes once a task: a task's settle line goes with the
next task's start line, which is always on the pipe before that task runs.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import threading
import time

from asynctask import AsyncTaskWorker, get_transport
from asynctask.child import EXIT_TASK_TIMEOUT, ChildSpec
from asynctask.reports import ReportReader, ReportWriter
from asynctask.runner import LoopOptions, run_loop
from asynctask.settings import load_settings
from asynctask.supervisor import Supervisor
from asynctask.testing import unique_queue
from asynctask.transport import Delivery


def _supervisor_reading(report: ReportReader) -> Supervisor:
    spec = ChildSpec(
        queue="q_reports", worker="w", settings={}, sources={}, imports=[], parent_pid=0
    )
    supervisor = Supervisor([spec], check_interval=5.0)
    supervisor.slots[0].report = report
    return supervisor


def test_the_supervisor_reads_a_busy_childs_lines_in_batches():
    # Given a supervisor holding a child's report pipe, which it has just read
    report = ReportReader()
    supervisor = _supervisor_reading(report)
    try:
        os.write(report.write_fd, b"S one\n")
        supervisor._wait(time.monotonic())
        assert report.running == {"one"}
        # When the child writes more lines right after
        os.write(report.write_fd, b"D one\nS two\n")
        began = time.monotonic()
        supervisor._wait(time.monotonic())
        waited = time.monotonic() - began
        # Then the supervisor does not wake for them at once: it waits out its read
        # interval (not its check interval) and reads them on its next turn, all together
        assert report.running == {"one"}
        assert report.read_every * 0.5 <= waited < 1.0
        supervisor._wait(time.monotonic())
        assert report.running == {"two"}
        assert report.settled == 1
    finally:
        report.close()
        os.close(report.write_fd)
        os.close(supervisor._wake_r)
        os.close(supervisor._wake_w)


def test_a_busy_child_wakes_its_supervisor_a_few_times_a_second():
    """A child writing without pause (a no-op drain) wakes the supervisor at most about
    15 times a second: each wake-up of the supervisor takes a core from the children and
    Redis on a 2-core machine (issue 12's 2-children drain; 50 a second per child at a
    20 ms read interval, failed so: 'woke 49 times in 1 s')."""
    # Given a supervisor holding a child's report pipe
    report = ReportReader()
    supervisor = _supervisor_reading(report)
    stop = threading.Event()

    def child() -> None:
        while not stop.is_set():
            os.write(report.write_fd, b"S " + b"1" * 32 + b"\nD " + b"1" * 32 + b"\n")
            time.sleep(0.0005)

    writer = threading.Thread(target=child)
    writer.start()
    reads = 0
    original = report.read

    def counted() -> None:
        nonlocal reads
        reads += 1
        original()

    report.read = counted  # type: ignore[method-assign]
    try:
        # When the child writes for a second
        began = time.monotonic()
        while time.monotonic() - began < 1.0:
            supervisor._wait(time.monotonic())
        # Then the supervisor read its lines a few times, not at every line
        assert 1 <= reads <= 15, f"woke {reads} times in 1 s"
    finally:
        stop.set()
        writer.join()
        report.close()
        os.close(report.write_fd)
        os.close(supervisor._wake_r)
        os.close(supervisor._wake_w)


def test_a_child_may_write_a_whole_read_interval_without_waiting():
    # Given a fresh report pipe
    report = ReportReader()
    try:
        # When a child writes what 100,000 tasks a second write in its read interval (a
        # start and a settle line each), with nobody reading
        line = b"S " + b"0" * 32 + b"\nD " + b"0" * 32 + b"\n"
        os.set_blocking(report.write_fd, False)
        for _ in range(int(100_000 * report.read_every)):
            # Then the pipe takes every line (a full one would raise BlockingIOError)
            os.write(report.write_fd, line)
    finally:
        report.close()
        os.close(report.write_fd)


class _Peek(AsyncTaskWorker):
    """Notes, as each task starts, what its child had written on the pipe until then."""

    name = "peek_reports"

    def __init__(self, read_fd: int) -> None:
        super().__init__()
        self.read_fd = read_fd
        self.seen: list[bytes] = []

    def process(self, payload: dict) -> None:
        self.seen.append(os.read(self.read_fd, 65536))


class _Quiet(AsyncTaskWorker):
    """Does nothing: the test alone reads the pipe."""

    name = "quiet_reports"

    def process(self, payload: dict) -> None:
        return None


def test_a_task_is_reported_started_before_it_runs_with_one_write_a_task(monkeypatch):
    # Given a run loop reporting on a pipe, and three tasks whose process() reads the pipe
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    writer = ReportWriter(write_fd)
    # (the writes counted at the pipe: the writer writes a start inline, not by a method)
    writes = []
    real_write = os.write

    def counted_write(fd: int, data: bytes) -> int:
        writes.extend([fd] if fd == write_fd else [])
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", counted_write)
    worker = _Peek(read_fd)
    transport = get_transport("localmem:")
    queue = unique_queue()
    ids = transport.submit_tasks(queue, [{}, {}, {}])
    options = LoopOptions(
        stop_when_idle=True,
        prefetch=4,
        on_start=writer.started,
        on_settled=writer.settled,
        on_idle=writer.flush,
    )
    try:
        # When the loop drains the queue
        assert run_loop(worker, transport, queue, options).processed == 3
        left = os.read(read_fd, 65536)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    # Then each task's start line was on the pipe before its process() ran, after the
    # settle line of the task before it, and the last settle line came when the loop
    # found the queue empty: one write a task
    a, b, c = ids
    assert worker.seen == [
        f"S {a}\n".encode(),
        f"D {a}\nS {b}\n".encode(),
        f"D {b}\nS {c}\n".encode(),
    ]
    assert left == f"D {c}\n".encode()
    assert len(writes) == 3 + 1


def test_a_settle_line_is_written_once_the_queue_is_found_empty():
    # Given a run loop that waits for tasks (as a child does) and reports on a pipe
    read_fd, write_fd = os.pipe()
    writer = ReportWriter(write_fd)
    transport = get_transport("localmem:")
    queue = unique_queue()
    (task_id,) = transport.submit_tasks(queue, [{}])
    options = LoopOptions(
        wait=0.05, on_start=writer.started, on_settled=writer.settled, on_idle=writer.flush
    )
    # (a worker that does not read the pipe itself: with _Peek, its read and this
    # test's raced for the start line, and a loaded run saw process() block for ever)
    loop = threading.Thread(target=run_loop, args=(_Quiet(), transport, queue, options))
    loop.start()
    try:
        # When its one task has run and the queue stays empty
        seen = b""
        deadline = time.monotonic() + 10
        while b"D " not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([read_fd], [], [], 0.1)
            if ready:
                seen += os.read(read_fd, 65536)
        # Then the settle line is on the pipe while the loop still runs
        assert loop.is_alive()
        assert seen.endswith(f"D {task_id}\n".encode())
    finally:
        options.stop.set()
        loop.join(10)
        os.close(read_fd)
        os.close(write_fd)


def _read_batches(*batches: bytes) -> ReportReader:
    """A reader that took in each batch of lines with one read."""
    report = ReportReader()
    try:
        for batch in batches:
            os.write(report.write_fd, batch)
            report.read()
    finally:
        report.close()
        os.close(report.write_fd)
    return report


def test_a_batch_of_lines_leaves_what_a_line_by_line_reading_would():
    # Given a supervisor that takes a batch of lines in with set operations, not a line
    # at a time: each case is a child's lines, read in one or two batches
    # When a task settled in a batch starts again after its settle line (a retry run
    # by the same child), whether its first start came in an earlier batch...
    report = _read_batches(b"S a\nS b\n", b"D a\nD b\nS a\n")
    # Then it is running, and every settle counted, oldest first
    assert report.running == {"a"}
    assert (report.settled, report.finished) == (2, ["a", "b"])
    # ...or in the same batch, or after a settle with no start (a refused task)
    assert _read_batches(b"S a\nD a\nS a\nS c\nD c\n").running == {"a"}
    assert _read_batches(b"X a\nS a\n").running == {"a"}
    # And a task whose last line is its settle is not running, whatever came before
    report = _read_batches(b"S a\nD a\nS a\n", b"D a\nX b\nS c\nD c\n")
    assert report.running == set()
    assert report.settled == 4
    # And a line cut by the end of a read waits for its end
    report = _read_batches(b"S a\nS b", b"c\nD a\n")
    assert report.running == {"bc"}


def test_a_task_that_never_started_is_reported_settled_not_started():
    # Given a run loop reporting on a pipe, and a task past its last attempt (its
    # earlier deliveries' worker died): it goes to the failed store without running
    read_fd, write_fd = os.pipe()
    writer = ReportWriter(write_fd)
    transport = get_transport("localmem:")
    queue = unique_queue()
    (task_id,) = transport.submit_tasks(queue, [{}])
    with transport.consumer(queue) as consumer:
        delivery = consumer.reserve(timeout=1)
        assert delivery is not None
        consumer.release(delivery)
    options = LoopOptions(
        stop_when_idle=True,
        on_start=writer.started,
        on_settled=writer.settled,
        on_unstarted=writer.unstarted,
        on_idle=writer.flush,
    )
    worker = _Quiet()
    worker.max_retries = -1  # every delivery is past its last attempt
    try:
        # When the loop drains the queue
        run_loop(worker, transport, queue, options)
        written = os.read(read_fd, 65536)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    # Then the child said it settled the task, with no start line
    assert written == f"X {task_id}\n".encode()


def test_a_child_ended_by_a_task_timeout_reports_the_tasks_it_settled(tmp_path):
    """A child that ends itself at a task timeout (``os._exit``) has written every settle
    line it held: else the supervisor counts the tasks it finished as started and
    unsettled, and ``Liveness.end`` charges them an attempt. Two flushes give it: the
    event loop's on its way out (``run_concurrent``) and ``child._exit_reported``; with
    either one removed this passes, with both removed it failed (the stuck task's line,
    held since its settle as a timeout, was lost: ``settled`` 1, not 2)."""
    # Given an async child running two tasks at once on a report pipe: one that ends at
    # once, one that ignores its cancellation at its 1 s timeout (the child must go)
    uri = f"filesys:{tmp_path / 'q'}"
    queue = unique_queue()
    ledger = str(tmp_path / "ledger.jsonl")
    quick, stuck = get_transport(uri).submit_tasks(
        queue,
        [
            {"ledger": ledger, "kind": "ok", "seconds": 0},
            {"ledger": ledger, "kind": "ignore"},
        ],
    )
    settings = load_settings(overrides=[f"asynctask_transport={uri}"], environ={}, cwd=tmp_path)
    report = ReportReader()
    spec = ChildSpec(
        queue=queue,
        worker="test_async_mix",
        settings=settings.raw,
        sources=settings.sources,
        imports=[],
        parent_pid=os.getpid(),
        quiet=True,
        child_concurrency=2,
        report_fd=report.write_fd,
        grace=0.5,
    )
    child = subprocess.Popen(
        [sys.executable, "-P", "-m", "asynctask.child"],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=(report.write_fd,),
    )
    report.close_write_end()
    try:
        _, err = child.communicate(spec.to_json().encode(), timeout=60)
        # When it ends itself at the timeout
        assert child.returncode == EXIT_TASK_TIMEOUT, err.decode()
        report.read()
        # Then what the supervisor read (and gives to Liveness.end) has the quick task
        # settled, not started and unsettled: it is not charged an attempt
        assert quick in report.finished
        assert quick not in report.running
        assert report.settled == 2  # the stuck one too: settled as its timeout
        assert stuck not in report.running
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        report.close()


def test_the_exit_at_a_task_timeout_writes_the_held_settle_lines_first(monkeypatch):
    """``child._exit_reported`` itself: the lines held go out before ``os._exit``, and
    the exit happens even if that write fails. (Failed with its flush removed: nothing
    on the pipe.)"""
    from asynctask import child

    exits: list[int] = []
    monkeypatch.setattr(child.os, "_exit", exits.append)
    read_fd, write_fd = os.pipe()
    try:
        # Given a child's writer holding the settle line of a finished task
        writer = ReportWriter(write_fd)
        writer.settled(Delivery("t1", "q", {}, 1, 0.0, None))
        # When the child exits at a task timeout
        child._exit_reported(writer, EXIT_TASK_TIMEOUT)
        # Then the line is on the pipe, and the exit came
        assert select.select([read_fd], [], [], 0)[0] == [read_fd], "nothing on the pipe"
        assert os.read(read_fd, 100) == b"D t1\n"
        assert exits == [EXIT_TASK_TIMEOUT]
        # And a write that fails still exits
        broken = ReportWriter(write_fd)
        broken.settled(Delivery("t2", "q", {}, 1, 0.0, None))
        monkeypatch.setattr(broken, "flush", lambda: (_ for _ in ()).throw(OSError("gone")))
        with contextlib.suppress(OSError):
            child._exit_reported(broken, EXIT_TASK_TIMEOUT)
        assert exits == [EXIT_TASK_TIMEOUT] * 2
    finally:
        os.close(read_fd)
        os.close(write_fd)
