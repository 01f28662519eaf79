"""The status of a task not yet started, read from its task file (issue 20).

A tracked submit of ``filesys:`` writes no status record: the task's id names its task
file, and the file is the status until a worker starts the task (its start writes the
record, ``asynctask_filesys.state``). The id is::

    <queue>__<stamp: 16 hex digits><priority: 1 digit><r|d><8 hex digits>

``r``: submitted ready, the stamp is its name's (its submission, ns); ``d``: delayed,
the stamp is its due time. The last 8 digits are random (the core's id's first 8), so
two producers' tasks of one nanosecond differ. A queue name never holds ``__`` (nor
does this tail), so the id splits at its last ``__``. From the id alone, then, its file
is ``<queue>/ready/[+R]<stamp>-<id>.json`` (or ``delayed/`` until due, or
``claimed/<owner>/`` once taken and not yet started): one ``lstat`` each, no listing
but ``claimed/`` (one name a consumer). The file gives the rest: its mtime is the
submission time, its envelope the expiry. A submit with a ``unique_key`` keeps the
record it had (the key's holder must be readable before its file is written), and so
does every id another program or an earlier version made: both are read as before.

The cost it saves: a record was a second create a task (create, write, close), a
journaled directory update that waits behind other processes' fsyncs on ext4; a
submit is now the raw loop's create, write, fsync, close, rename a task.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from asynctask.validation import is_valid_queue_name
from asynctask_filesys.layout import QueuePaths, TaskName, read_task_file, task_names

_TAIL = re.compile(r"^([0-9a-f]{16})([0-9])([rd])([0-9a-f]{8})$")
#: the key of a task file's envelope (``asynctask_filesys.queues.MARKER``)
_MARKER = "__asynctask__"


@dataclass(frozen=True)
class QueuedRef:
    """What a task id made by ``task_id`` says: where its file is and what it is named."""

    queue: str
    stamp: int
    priority: int
    delayed: bool


def task_id(queue: str, stamp: int, priority: int, delayed: bool, random_hex: str) -> str:
    """The id of a task submitted with no record (see the module docstring)."""
    return f"{queue}__{stamp:016x}{priority}{'d' if delayed else 'r'}{random_hex[:8]}"


def parse(task_id: str) -> QueuedRef | None:
    """The reference an id made by ``task_id`` holds; None for any other id."""
    queue, sep, tail = task_id.rpartition("__")
    if not sep:
        return None
    match = _TAIL.match(tail)
    if match is None or not is_valid_queue_name(queue):
        return None
    stamp, priority, kind, _ = match.groups()
    return QueuedRef(queue, int(stamp, 16), int(priority), kind == "d")


def file_name(ref: QueuedRef, task_id: str) -> str:
    """The name of the task's file (in ``ready/``, ``delayed/`` or ``claimed/*/``)."""
    return TaskName(ref.stamp, task_id, 0, True, ref.priority).format()


def waiting_paths(root: str, ref: QueuedRef, task_id: str) -> list[str]:
    """Where the file of a task nobody took yet is, in the order it moves."""
    paths = QueuePaths(root, ref.queue)
    name = file_name(ref, task_id)
    ready = os.path.join(paths.ready, name)
    return [os.path.join(paths.delayed, name), ready] if ref.delayed else [ready]


def find(root: str, task_id: str, limit: int) -> tuple[dict[str, Any], str, os.stat_result] | None:
    """The status record a task not yet started would have had, read from its file, with
    the file's path and stat; None when the id names no file that is waiting or taken and
    not started (it started: its record tells, or it is gone)."""
    ref = parse(task_id)
    if ref is None:
        return None
    candidates = waiting_paths(root, ref, task_id)
    claimed = QueuePaths(root, ref.queue).claimed
    name = file_name(ref, task_id)
    for path in candidates:
        found = _read(path, ref, limit)
        if found is not None:
            return found
    for owner in task_names(claimed):  # taken, its start not written yet
        found = _read(os.path.join(claimed, owner, name), ref, limit)
        if found is not None:
            return found
    return None


def _read(
    path: str, ref: QueuedRef, limit: int
) -> tuple[dict[str, Any], str, os.stat_result] | None:
    try:
        info = os.lstat(path)
        data, _ = read_task_file(path, limit)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:  # not a task file after all (another program's): no status here
        return None
    record: dict[str, Any] = {"queue": ref.queue, "state": "queued", "attempts": 0}
    record["submitted_at"] = info.st_mtime
    if ref.delayed:
        record.update(state="delayed", due_at=ref.stamp / 1e9)
    expires = _expires(data)
    if expires is not None:
        record["expires"] = expires
    return record, path, info


def _expires(data: bytes) -> float | None:
    """The expiry an envelope carries (Unix seconds), if any."""
    if _MARKER.encode() not in data:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    expires = value.get("expires") if isinstance(value, dict) else None
    if isinstance(expires, bool) or not isinstance(expires, int | float):
        return None
    return float(expires)
