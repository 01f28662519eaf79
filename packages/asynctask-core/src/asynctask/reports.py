"""What a child tells its supervisor about its tasks: one pipe, one line per event.

``S <n> <id>`` right before a task's ``process()`` starts, ``D <n> <id>`` once it is
settled (acknowledged, retried or failed); ``n`` numbers the child's starts, so that
``<n> <id>`` names one start of one task (a task retried into the same child is
started again under a new number), and ``D - <id>`` settles a task that never started
(refused unsigned, spent, cancelled). The supervisor keeps the child's liveness
(``asynctask.liveness``): when the child dies, the tasks it started and had not settled
count an attempt, the ones it settled are gone (an acknowledgement may still have been
waiting in its consumer), and every other task it held goes back uncounted. A write is
shorter than ``PIPE_BUF``, so it is whole; lines written just before the child died are
still read after it is reaped.

A ``D`` line is not written on its own: it waits for the next write, the next task's
``S`` line (one write a task instead of two: a write is a system call, a tenth of a
no-op task's cost), or ``flush``, which the run loops call before they may wait (a
reserve that came back empty, a rate limit) and when they end. So the ``S`` line always
goes out before ``process()``, and a ``D`` line at most one reserve late. A child killed
in that reserve (it carries the acknowledgements of the settled tasks to the backend)
has its last settled tasks counted as started: one may run again, with one more
attempt counted, as at-least-once allows.

The supervisor reads a child's lines in batches (``READ_EVERY``), and takes a batch in
with a few calls that each handle all of its lines at once (two ``findall``, a set
difference, a ``deque.extend``): no Python object or branch per line, since a
supervisor of 2 children draining no-op tasks spent 2-3 us of CPU a task reading them
line by line, on the cores its children need. Because a start's key is unique, the
order of the lines within a batch does not matter: a set difference is exact.
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

#: seconds the supervisor lets a child's lines gather before it reads them again: read
#: at every line, the supervisor woke once or twice a task and used as much CPU as the
#: child itself (a no-op drain on 2 cores: 28 us of supervisor CPU a task)
READ_EVERY = 0.02
#: the pipe's capacity: what a child at 100,000 tasks a second writes in ``READ_EVERY``
#: fits, so it never waits for the supervisor (Linux's default is 64 KiB)
PIPE_BYTES = 1 << 20


#: settled lines held longer than this are written at once: a write stays whole
_HELD_MAX = 2048

#: the key (``<n> <id>``) of every start line, of every settle line, in a batch
_STARTS = re.compile(rb"^S (.+)$", re.MULTILINE)
_SETTLES = re.compile(rb"^D (.+)$", re.MULTILINE)


def task_id(key: bytes) -> str:
    """The task id of a line's key, ``<n> <id>`` (or a bare id, as older children
    wrote)."""
    head, space, tail = key.partition(b" ")
    return (tail if space else head).decode("ascii", "replace")


class ReportWriter:
    """The child's end: ``started``/``settled``/``flush`` are ``LoopOptions.on_start``/
    ``on_settled``/``on_idle``."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        if fd is not None:
            os.set_inheritable(fd, False)  # not for the processes a task may start
        #: the settled lines not written yet (see the module docstring)
        self._held = ""
        #: the number of the next start
        self._starts = 0
        #: task id -> the key of its start, for its settle line
        self._keys: dict[str, str] = {}

    def _send(self, line: str) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, line.encode())
        except OSError:  # the supervisor is gone: the child dies with it anyway
            self.fd = None

    def started(self, delivery: Delivery) -> None:
        """A task is about to start: its line, after the settled lines held, in one write."""
        self._starts += 1
        key = self._keys[delivery.id] = f"{self._starts} {delivery.id}"
        line, self._held = f"{self._held}S {key}\n", ""
        self._send(line)

    def settled(self, delivery: Delivery) -> None:
        """A task is settled: its line goes with the next write."""
        key = self._keys.pop(delivery.id, None)
        self._held += f"D {key}\n" if key is not None else f"D - {delivery.id}\n"
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
        if setsize is not None:
            # over /proc/sys/fs/pipe-max-size: the default size; a full pipe only waits
            with contextlib.suppress(OSError):
                fcntl.fcntl(self.fd, setsize, PIPE_BYTES)
        #: when the lines are worth reading again (``time.monotonic()``)
        self.read_at = 0.0
        self._text = b""
        #: keys (``<n> <id>``) of the starts the child has not settled
        self._running: set[bytes] = set()
        #: keys of the last tasks it settled
        self._finished: deque[bytes] = deque(maxlen=FINISHED_KEPT)
        #: how many tasks it settled in all: a child that dies having settled none is
        #: one more turn of a crash loop (``asynctask.supervisor``)
        self.settled = 0

    @property
    def running(self) -> set[str]:
        """Ids of the tasks the child started and has not settled."""
        return {task_id(key) for key in self._running}

    @property
    def finished(self) -> list[str]:
        """Ids of the last tasks it settled (at most ``FINISHED_KEPT``), oldest first."""
        return [task_id(key) for key in self._finished]

    def close_write_end(self) -> None:
        """Close our copy of the write end, once the child has its own."""
        os.close(self.write_fd)

    def read(self) -> None:
        """Take in every complete line the child wrote so far."""
        if self.fd is None:
            return
        self.read_at = time.monotonic() + READ_EVERY
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
        lines, self._text = text[:whole], text[whole:]
        if lines:
            self._running.update(_STARTS.findall(lines))
            settles = _SETTLES.findall(lines)
            self._running.difference_update(settles)
            self._finished.extend(settles)
            self.settled += len(settles)
        if ended:
            self.close()

    def close(self) -> None:
        """Close the read end."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
