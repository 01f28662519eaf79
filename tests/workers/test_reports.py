"""The report pipe between a child and its supervisor (``asynctask.reports``).

The supervisor must know which tasks a child started before it died, but it need not
know it at once: it reads a busy child's lines in batches, at most every
``READ_EVERY`` seconds, instead of waking for each line (which cost as much CPU as the
child's own run loop).
"""

from __future__ import annotations

import os
import time

from asynctask.child import ChildSpec
from asynctask.reports import READ_EVERY, ReportReader
from asynctask.supervisor import Supervisor


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
        # Then the supervisor does not wake for them at once: it waits out READ_EVERY
        # (not its check interval) and reads them on its next turn, all together
        assert report.running == {"one"}
        assert READ_EVERY * 0.5 <= waited < 1.0
        supervisor._wait(time.monotonic())
        assert report.running == {"two"}
        assert report.settled == 1
    finally:
        report.close()
        os.close(report.write_fd)
        os.close(supervisor._wake_r)
        os.close(supervisor._wake_w)


def test_a_child_may_write_a_whole_read_interval_without_waiting():
    # Given a fresh report pipe
    report = ReportReader()
    try:
        # When a child writes what 100,000 tasks a second write in READ_EVERY (a start
        # and a settle line each), with nobody reading
        line = b"S " + b"0" * 32 + b"\nD " + b"0" * 32 + b"\n"
        os.set_blocking(report.write_fd, False)
        for _ in range(int(100_000 * READ_EVERY)):
            # Then the pipe takes every line (a full one would raise BlockingIOError)
            os.write(report.write_fd, line)
    finally:
        report.close()
        os.close(report.write_fd)
