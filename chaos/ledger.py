"""The ledger: what the workers did, kept outside the transport in an append-only file.

Each line is JSON, written by one ``write()`` to a file opened with ``O_APPEND``, so lines
of many processes never interleave and a SIGKILL never leaves half a line:

* ``{"e": "start", "n": 7, "a": 1, "pid": 123, "h": "host1", "t": 1715000000.1}`` when
  ``process()`` begins;
* ``{"e": "done", ...}`` when it returns (the task is *completed*);
* ``{"e": "raise", ...}`` when a poison task raises.

``n`` is the task's number in its run, ``a`` the transport's attempt number (1 for a first
delivery), ``h`` the host name (hosts of ``chaos.hosts`` have PID spaces of their own: a
pid names a process only with its host), ``t`` ``time.time()`` (one machine, so it
compares across processes and hosts).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass

#: the environment variable naming the ledger file; the supervisor's children inherit it
LEDGER_VARIABLE = "CHAOS_LEDGER"


@dataclass(frozen=True)
class Entry:
    """One line of the ledger."""

    event: str
    n: int
    attempt: int | None
    pid: int
    time: float
    host: str = ""

    @property
    def process(self) -> tuple[str, int]:
        """The process that wrote it: its host and its pid there."""
        return (self.host, self.pid)


def append(fd: int, event: str, n: int, attempt: int | None, when: float) -> None:
    """Write one line to an ``O_APPEND`` descriptor, in one ``write()``."""
    line = {"e": event, "n": n, "a": attempt, "pid": os.getpid(), "h": _HOST, "t": when}
    os.write(fd, (json.dumps(line) + "\n").encode())


_HOST = socket.gethostname()


def read(path: str) -> list[Entry]:
    """Every complete line of the ledger, in the order written."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return []
    return list(_parse(text.split("\n")[:-1]))  # the last piece is empty or being written


def _parse(lines: Iterable[str]) -> Iterable[Entry]:
    for line in lines:
        row = json.loads(line)
        yield Entry(
            row["e"], int(row["n"]), row["a"], int(row["pid"]), float(row["t"]), row.get("h", "")
        )


class Follower:
    """Reads a ledger as it grows: the set of task numbers completed so far."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.completed: set[int] = set()
        #: the entries read by the last ``poll``
        self.recent: list[Entry] = []

    def poll(self) -> set[int]:
        """Read what is new; return every ``n`` completed at least once."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return self.completed
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        self.recent = list(_parse(chunk[:end].decode().splitlines()))
        for entry in self.recent:
            if entry.event == "done":
                self.completed.add(entry.n)
        return self.completed
