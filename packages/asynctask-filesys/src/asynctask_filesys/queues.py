"""What the filesys transport and its consumers share: a queue's folders, reading a task
file safely, and moving a file to the failed store.

Imports run one way: ``transport`` imports ``consumer``, and both import this module
(``FilesysBase`` is the transport's base class), so a consumer never imports the module
that imports it.

The folder may be shared with other local users (``?mode=0660``), so anything in it is
read as hostile: a task file is opened without following symlinks and without blocking,
only a regular file is read, and only up to ``asynctask_max_payload_bytes``; anything
else goes to the failed store with what it is, never with what it points to.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass

from asynctask.transport import Transport
from asynctask.validation import Payload, UndecodableMessage
from asynctask_filesys.layout import (
    META_SUFFIX,
    NotATaskFile,
    QueuePaths,
    TaskName,
    failed_name,
    make_dirs,
    read_task_file,
    write_file,
)
from asynctask_filesys.owners import Heartbeats
from asynctask_filesys.state import FilesysStateStore

#: the key that makes a task file an envelope ``{"__asynctask__":1,"headers":{...},
#: "payload":{...}}`` (written only for tasks with headers or lifecycle options: a
#: signature, ``"expires"`` in Unix seconds, ``"unique_key"``)
MARKER = "__asynctask__"


@dataclass(frozen=True)
class TaskOptions:
    """What a task file says about its lifecycle (``asynctask.status``): when it expires
    (Unix seconds) and the unique key it holds, so that a consumer needs no other read."""

    expires: float | None = None
    unique_key: str | None = None


NO_OPTIONS = TaskOptions()


class FilesysBase(Transport):
    """The part of ``FilesysTransport`` its consumers use; see the module docstring."""

    root: str
    mode: int
    lease: float
    scan: float
    use_inotify: bool
    poll: float
    heartbeats: Heartbeats
    _made: set[str]

    def own_store(self) -> FilesysStateStore | None:
        """The transport's own status records, or None when it keeps its statuses in the
        store named by ``asynctask_state`` (or a subclass keeps none)."""
        return None

    def paths(self, queue: str) -> QueuePaths:
        """The folders of ``queue``."""
        return QueuePaths(self.root, queue)

    def ensure_queue(self, queue: str, again: bool = False) -> QueuePaths:
        """The folders of ``queue``, created if missing (``again``: check once more)."""
        paths = self.paths(queue)
        if again or queue not in self._made:
            make_dirs((self.root, *paths.all()), self.mode)
            self._made.add(queue)
        return paths

    def to_failed(
        self,
        queue: str,
        path: str,
        name: str,
        error: str,
        attempts: int,
        stored: str | None = None,
    ) -> None:
        """Move the file at ``path`` to the failed store, with a ``.meta`` sidecar written
        first, so a crash between the two leaves the task where it was. The move itself is
        one rename: of the link, the FIFO or the file, never of what it points to.
        ``stored``: its name there (``failed_name``), when the caller noted it first
        (the failed window, ``asynctask.status``); else made now."""
        paths = self.ensure_queue(queue)
        if stored is None:
            stored = failed_name(name, time.time_ns())
        meta = {"error": error, "attempts": attempts, "failed_at": time.time()}
        tmp = os.path.join(paths.tmp, stored + META_SUFFIX)
        write_file(tmp, json.dumps(meta).encode(), self.mode, sync=False)
        os.rename(tmp, os.path.join(paths.failed, stored + META_SUFFIX))
        try:
            os.rename(path, os.path.join(paths.failed, stored))
        except FileNotFoundError:  # another taker got there first
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(paths.failed, stored + META_SUFFIX))

    def read_task(
        self, queue: str, path: str, name: str, task: TaskName | None = None
    ) -> tuple[Payload, float, dict[str, str], TaskOptions] | None:
        """The payload, submission time and headers of the task file at ``path``, or None
        after moving what is there to the failed store with the reason (or when it is gone).
        ``task``: ``name`` parsed already (the consumer's hot path parses it once).

        Whatever the file holds or is, this returns or moves it: it never raises for the
        content, so one bad file cannot stop a worker.
        """
        if task is None:
            task = TaskName.parse(name)
        if not task.is_json:
            self.to_failed(queue, path, name, "not a task file (task files end in .json)", 0)
            return None
        try:
            data, mtime = read_task_file(path, self.max_payload_bytes)
        except FileNotFoundError:
            return None
        except NotATaskFile as exc:
            self.to_failed(queue, path, name, f"undecodable message: {exc}", task.attempts)
            return None
        except OSError as exc:
            self.to_failed(queue, path, name, f"unreadable task file: {exc}", task.attempts)
            return None
        try:
            payload, headers, options = unwrap_all(self.decode(data))
        except ValueError as exc:  # UndecodableMessage: whatever the parser raised
            self.to_failed(queue, path, name, f"undecodable message: {exc}", task.attempts)
            return None
        return payload, mtime, headers, options


def wrap(payload_json: str, headers: dict[str, str], options: TaskOptions = NO_OPTIONS) -> str:
    """A task file's text: the payload, or an envelope when the task has headers or
    lifecycle options."""
    if not headers and options == NO_OPTIONS:
        return payload_json
    head = json.dumps(headers, separators=(",", ":"))
    extra = ""
    if options.expires is not None:
        extra += f',"expires":{options.expires!r}'
    if options.unique_key is not None:
        extra += f',"unique_key":{json.dumps(options.unique_key)}'
    return f'{{"{MARKER}":1,"headers":{head}{extra},"payload":{payload_json}}}'


def unwrap(value: Payload) -> tuple[Payload, dict[str, str]]:
    """The payload and headers of a decoded task file (``UndecodableMessage`` if it is an
    envelope that is not well formed)."""
    payload, headers, _ = unwrap_all(value)
    return payload, headers


def unwrap_all(value: Payload) -> tuple[Payload, dict[str, str], TaskOptions]:
    """The payload, headers and lifecycle options of a decoded task file; an envelope
    that is not well formed (another user may have written it) is ``UndecodableMessage``."""
    if MARKER not in value:
        return value, {}, NO_OPTIONS
    payload, headers = value.get("payload"), value.get("headers", {})
    if not isinstance(payload, dict):
        raise UndecodableMessage("envelope payload must be a JSON object")
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise UndecodableMessage("envelope headers must map strings to strings")
    expires, unique_key = value.get("expires"), value.get("unique_key")
    if expires is not None and (
        isinstance(expires, bool)
        or not isinstance(expires, int | float)
        or not math.isfinite(expires)
    ):
        raise UndecodableMessage("envelope expires must be a number of Unix seconds")
    if unique_key is not None and (not isinstance(unique_key, str) or len(unique_key) > 200):
        raise UndecodableMessage("envelope unique_key must be a string of at most 200")
    if expires is None and unique_key is None:
        return payload, headers, NO_OPTIONS
    return payload, headers, TaskOptions(None if expires is None else float(expires), unique_key)
