"""What a child tells its supervisor about its tasks: one pipe, one line per event.

``S <id>`` right before a task's ``process()`` starts, ``D <id>`` once it is settled
(acknowledged, retried or failed), ``X <id>`` once a task that never started is
settled (refused unsigned, spent, cancelled or expired before its start). The
supervisor keeps the child's liveness (``asynctask.liveness``): when the child dies,
the tasks it started and had not settled count an attempt, the ones it settled are
gone (an acknowledgement may still have been waiting in its consumer), and every other
task it held goes back uncounted. A write is shorter than ``PIPE_BUF``, so it is whole;
lines written just before the child died are still read after it is reaped.

A ``D`` line is not written on its own: it waits for the next write, the next task's
``S`` line (one write a task instead of two: a write is a system call, a tenth of a
no-op task's cost), or ``flush``, which the run loops call before they may wait (a
reserve that came back empty, a rate limit) and when they end. So the ``S`` line always
goes out before ``process()``, and a ``D`` line at most one reserve late. A child killed
in that reserve (it carries the acknowledgements of the settled tasks to the backend)
has its last settled tasks counted as started: one may run again, with one more
attempt counted, as at-least-once allows.

The supervisor reads a child's lines in batches (``ReportReader.read_every``) and takes
a batch in with a few calls that each handle all of its lines at once (``findall``, set
operations, ``deque.extend``): no Python object or branch per line. Read line by line,
a supervisor of 2 children draining no-op tasks spent about 2 us of CPU a task (1-2% of
a core at 7,000 tasks/s) on the cores its children need. Within a batch the order of a
task's lines matters only for a task started again after its ``D`` line (a retry run by
the same child), which then was running before the batch or starts twice in it: only
those few are looked at one by one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections import deque

from asynctask.transport import Delivery

#: settled task ids remembered per child: acknowledgements a consumer has not sent yet
#: (at most its prefetch, times the tasks it runs at once) are among the last ones
FINISHED_KEPT = 1024

#: the longest the supervisor lets a child's lines gather before it reads them again.
#: Read at every line, the supervisor woke once or twice a task and used as much CPU as
#: the child itself (a no-op drain on 2 cores: 28 us of supervisor CPU a task); read
#: every 20 ms it still woke 50 times a second per busy child, each time taking a core
#: from the children and Redis of a 2-core machine (issue 12's 2-children drain). The
#: lines are only needed when the child dies (read then from the pipe, whole) and by the
#: cancel watch, which polls every 0.25 s (``asynctask.cancels``).
READ_EVERY = 0.1
#: the pipe's capacity asked for (Linux's default is 64 KiB; 1 MiB is its default
#: ``fs.pipe-max-size``)
PIPE_BYTES = 1 << 20
#: what the pipe must hold between two reads without the child waiting: a start and a
#: settle line (32-character ids) a task, 100,000 tasks a second, twice over
_BYTES_BETWEEN_READS = 2 * 70 * 100_000


#: settled lines held longer than this are written at once: a write stays whole
_HELD_MAX = 2048

#: the task ids of a batch's start lines, of its settle lines, of its unstarted ones
_STARTS = re.compile(rb"^S (.*)$", re.MULTILINE)
_SETTLES = re.compile(rb"^D (.*)$", re.MULTILINE)
_UNSTARTED = re.compile(rb"^X (.*)$", re.MULTILINE)


class ReportWriter:
    """The child's end: ``started``/``settled``/``flush`` are ``LoopOptions.on_start``/
    ``on_settled``/``on_idle``."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        if fd is not None:
            os.set_inheritable(fd, False)  # not for the processes a task may start
        #: the settled lines not written yet (see the module docstring)
        self._held = ""

    def _send(self, line: str) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, line.encode())
        except OSError:  # the supervisor is gone: the child dies with it anyway
            self.fd = None

    def started(self, delivery: Delivery) -> None:
        """A task is about to start: its line, after the settled lines held, in one write."""
        line, self._held = f"{self._held}S {delivery.id}\n", ""
        fd = self.fd
        if fd is not None:  # (``_send`` inline: once a task)
            try:
                os.write(fd, line.encode())
            except OSError:
                self.fd = None

    def unstarted(self, delivery: Delivery) -> None:
        """A task that never started is settled: its line goes with the next write."""
        self._held += f"X {delivery.id}\n"
        if len(self._held) > _HELD_MAX:
            self.flush()

    def settled(self, delivery: Delivery) -> None:
        """A started task is settled: its line goes with the next write."""
        self._held += f"D {delivery.id}\n"
        if len(self._held) > _HELD_MAX:
            self.flush()

    def flush(self) -> None:
        """Write the settled lines held: the loop may wait now, or it ends."""
        if self._held:
            lines, self._held = self._held, ""
            self._send(lines)


class ReportReader:
    """The supervisor's end, for one child start: what it started and settled."""

    def __init__(self) -> None:
        self.fd: int | None
        self.fd, self.write_fd = os.pipe()
        os.set_blocking(self.fd, False)
        setsize = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only
        capacity = 1 << 16
        if setsize is not None:
            # over /proc/sys/fs/pipe-max-size: the default size; a full pipe only waits
            with contextlib.suppress(OSError):
                fcntl.fcntl(self.fd, setsize, PIPE_BYTES)
            with contextlib.suppress(OSError):
                capacity = fcntl.fcntl(self.fd, getattr(fcntl, "F_GETPIPE_SZ", 1032))
        #: seconds between two reads: ``READ_EVERY``, shorter if the pipe is smaller than
        #: asked (1 MiB: 75 ms; 64 KiB: 4.7 ms), so that a child never waits on it
        self.read_every = min(READ_EVERY, capacity / _BYTES_BETWEEN_READS)
        #: when the lines are worth reading again (``time.monotonic()``)
        self.read_at = 0.0
        self._text = b""
        #: ids (ASCII bytes) of the tasks the child started and has not settled
        self._running: set[bytes] = set()
        #: ids of the last tasks it settled
        self._finished: deque[bytes] = deque(maxlen=FINISHED_KEPT)
        #: how many tasks it settled in all: a child that dies having settled none is
        #: one more turn of a crash loop (``asynctask.supervisor``)
        self.settled = 0

    @property
    def running(self) -> set[str]:
        """Ids of the tasks the child started and has not settled."""
        return {task_id.decode("ascii", "replace") for task_id in self._running}

    @property
    def finished(self) -> list[str]:
        """Ids of the last tasks it settled (at most ``FINISHED_KEPT``), oldest first."""
        return [task_id.decode("ascii", "replace") for task_id in self._finished]

    def close_write_end(self) -> None:
        """Close our copy of the write end, once the child has its own."""
        os.close(self.write_fd)

    def read(self) -> None:
        """Take in every complete line the child wrote so far."""
        if self.fd is None:
            return
        self.read_at = time.monotonic() + self.read_every
        chunks = [self._text]
        ended = False
        try:
            while True:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    ended = True  # every writer is gone: nothing more will come
                    break
                chunks.append(chunk)
        except BlockingIOError:
            pass
        text = b"".join(chunks)
        whole = text.rfind(b"\n") + 1
        if whole:
            self._take(text[:whole])
        self._text = text[whole:]
        if ended:
            self.close()

    def _take(self, lines: bytes) -> None:
        """Take in a batch of whole lines: the running set as a line-by-line reading
        would leave it, by set operations on the whole batch."""
        starts = _STARTS.findall(lines)
        settles = _SETTLES.findall(lines)
        if settles:
            self.settled += len(settles)
            self._finished.extend(settles)
        if b"X " in lines:
            unstarted = _UNSTARTED.findall(lines)
            self.settled += len(unstarted)
            self._finished.extend(unstarted)
        if not starts:
            self._running.difference_update(settles)
            return
        started = set(starts)
        # A task's S and D lines alternate, S first; its last one decides. So the set
        # difference is exact unless a task's D line in this batch is followed by an S
        # line: that D settled a start before this batch (the task is in the running
        # set) or one earlier in it (the task starts twice in the batch).
        both = started.intersection(settles)
        again = both & self._running
        if len(started) != len(starts):
            again |= both & {i for i in started if starts.count(i) > 1}
        self._running |= started
        self._running.difference_update(settles)
        if again:
            marked = b"\n" + lines
            for task_id in again:
                last_start = marked.rfind(b"\nS " + task_id + b"\n")
                if last_start > marked.rfind(b"\nD " + task_id + b"\n"):
                    self._running.add(task_id)

    def close(self) -> None:
        """Close the read end."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
