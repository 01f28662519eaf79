"""Task status records of ``filesys:``: one small JSON file per task, under the root::

    .status/live/<id>          running or retrying (made at start; queued, delayed: see below)
    .status/failed/<id>        failed: kept as long as the task is in the failed store
    .status/done/<END>/<id>    succeeded, cancelled, expired, finished before second END
    .status/unique/<queue>/<sha256 of the key>   the id of the task holding the key
    .status/untracked/<queue>  present while the queue's workers keep no status

A task submitted without a unique key has no record until it starts: its id names its
task file, which is its status while it waits (``asynctask_filesys.queued``); queued
and delayed records are those of a unique key's task, a requeued one, or an older
version's. A record moves between folders by ``rename``, which is atomic: of two processes moving
one record (an ack and a ``cancel``) exactly one succeeds and the other learns it from
``ENOENT``. Where the content changes, it is rewritten in place, under ``flock``, BEFORE
the move, so a record never sits in a final folder with content that says otherwise;
a reader meeting a torn write (the file is rewritten while read) reads it again.

The hot path writes no content: a worker's start appends a *mark* to the record (a
newline and the name of the journal its success will be written to, see ``split``; the
append's time is the file's mtime, the start time), and the success of a first attempt
without a result is a line in that journal (``asynctask_filesys.state.Journal``); the
record stays. A success after its journal closed is the rename ``live`` ->
``done/<END>``, which keeps that mtime (the finish time is the ctime). So a record
whose content still says ``queued`` reads ``running`` when marked, and ``succeeded``
when its journal lists it (by the task's first line there: a cancel's line before it
means ``cancelled``) or in ``done/``. A recovered copy's start rewrites the content,
which then carries the journal's name (``CARRIED``), so that a success the first
worker journals later still counts. An append needs only write permission, like every
other step: several users may share the folder (``mode=0660``).

Final records are forgotten by whole folders: ``done/<END>`` is removed once ``END``
plus the status TTL has passed (by whichever process opens a new one), so forgetting
never scans history; a reader ignores a record past its TTL that is still on disk.
The folder may be shared with other users: records are read like task files
(``O_NOFOLLOW``, regular files only, size-checked) and what they hold is checked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asynctask_filesys.layout import SAFE_OPEN, NotATaskFile

Record = dict[str, Any]

logger = logging.getLogger("asynctask.filesys")

FOLDER = ".status"
#: a task id as it may appear in a record's name (the ids of task file names)
_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
#: how a record is opened for an update: never through a symlink, never created
_UPDATE = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
#: how a mark is appended: never through a symlink, never created, never blocking
_MARK = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
#: seconds an update waits for a record's lock before it goes ahead without it
LOCK_WAIT = 1.0
#: how often a torn read (a record rewritten while read) is tried again
_READ_TRIES = 5


def valid_id(task_id: str) -> bool:
    """Whether ``task_id`` can name a record (never a path elsewhere)."""
    return bool(_ID.match(task_id))


class RecordPaths:
    """The folders of the status records under one root."""

    def __init__(self, root: str) -> None:
        self.base = os.path.join(root, FOLDER)
        self.tmp = os.path.join(self.base, "tmp")
        self.live = os.path.join(self.base, "live")
        self.failed = os.path.join(self.base, "failed")
        self.done = os.path.join(self.base, "done")
        self.unique = os.path.join(self.base, "unique")

    def all(self) -> tuple[str, ...]:
        """Every fixed folder, parents first."""
        return (self.base, self.tmp, self.live, self.failed, self.done, self.unique)


def encode(record: Record, result_json: str | None = None) -> bytes:
    """A record's bytes; ``result_json`` (already JSON text) is spliced in as is."""
    text = json.dumps(record, separators=(",", ":"))
    if result_json is not None:
        # a record's content is one line (a mark starts with a newline): in JSON text a
        # raw newline can only be whitespace between tokens, so a space does the same
        text = f'{text[:-1]},"result":{result_json.replace(chr(10), " ")}}}'
    return text.encode()


def _read_fd(fd: int, limit: int) -> tuple[bytes, os.stat_result]:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise NotATaskFile("a status record must be a regular file")
    if info.st_size > limit:
        raise NotATaskFile(f"a status record of {info.st_size} bytes is over {limit}")
    data = os.pread(fd, limit + 1, 0)
    if len(data) > limit:
        raise NotATaskFile(f"a status record grew past {limit} bytes")
    return data, info


def _parse(data: bytes) -> Record | None:
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


#: a journal a mark names: ``<END>/<name>`` under ``done/`` (never a path elsewhere)
_POINTER = re.compile(rb"^[0-9]{1,20}/[0-9a-f]{1,32}\.[0-9]{1,12}$")


def split(data: bytes) -> tuple[bytes, int, str | None]:
    """A record's bytes as its JSON content, its marks and the journal the last mark
    names (None: a plain mark, or none). A mark is one space (``mark()``'s default) or
    a newline and a journal's name (``<END>/<name>``, see ``asynctask_filesys.state``);
    the content is written without a newline, so the first one ends it."""
    head, newline, tail = data.partition(b"\n")
    content = head.rstrip(b" ")
    marks = len(head) - len(content)
    if not newline:
        return content, marks, None
    journal = None
    for part in tail.split(b"\n"):
        named = part.rstrip(b" ")
        marks += 1 + len(part) - len(named)
        journal = named.decode() if named == part and _POINTER.match(named) else None
    return content, marks, journal


#: the content field that carries, past a rewrite, the journal an earlier start's mark
#: named (a recovered copy's start: that start's worker may still journal a success)
CARRIED = "journal"


def named_journal(record: Record, journal: str | None) -> str | None:
    """The journal a record names: its last mark's, else the one its content carries
    (``CARRIED``), checked like a mark's (never a path elsewhere)."""
    if journal is not None:
        return journal
    carried = record.get(CARRIED)
    if isinstance(carried, str) and _POINTER.match(carried.encode()):
        return carried
    return None


@dataclass(frozen=True)
class Read:
    """A record as read: its content, its file's stat, its marks (the starts the hot
    path appended since the content was written) and the journal it names (the last
    mark's, else the one its content carries: ``named_journal``)."""

    record: Record
    info: os.stat_result
    marks: int
    journal: str | None = None


def read(path: str, limit: int) -> Read | None:
    """A record, or None when there is none (or it is not one)."""
    for attempt in range(_READ_TRIES):
        try:
            fd = os.open(path, SAFE_OPEN)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a planted symlink is no record
                return None
            raise
        try:
            data, info = _read_fd(fd, limit)
        except NotATaskFile:
            return None
        finally:
            os.close(fd)
        content, marks, journal = split(data)
        record = _parse(content)
        if record is not None:
            return Read(record, info, marks, named_journal(record, journal))
        if attempt < _READ_TRIES - 1:
            time.sleep(0.001)  # torn: being rewritten in place right now
    return None


def mark(path: str, text: bytes = b" ") -> bool:
    """Append a mark to a record (one space, or a newline and the journal its success
    will be written to): a start on the hot path, one ``write`` and no move. False
    when there is no record there (moved away: cancelled).

    No ``fstat`` first (it was a quarter of the mark's cost): ``O_NOFOLLOW`` refuses a
    planted symlink, ``O_NONBLOCK`` makes a FIFO without a reader fail (``ENXIO``), a
    folder fails to open for writing, and a user cannot plant a device node (nor, with
    ``protected_hardlinks``, a link to one). A FIFO somebody reads gets the mark, and
    the verdict is the one its missing record gives anyway: the task runs, untracked."""
    try:
        fd = os.open(path, _MARK)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # a planted symlink or FIFO
            return False
        raise
    try:
        os.write(fd, text)
    except BlockingIOError:  # a full FIFO (a regular file never says EAGAIN)
        pass
    finally:
        os.close(fd)
    return True


def read_bytes(path: str, limit: int) -> bytes | None:
    """A small file's bytes (a unique key's holder), read as safely as a record."""
    try:
        fd = os.open(path, SAFE_OPEN)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise
    try:
        return _read_fd(fd, limit)[0]
    except NotATaskFile:
        return None
    finally:
        os.close(fd)


def create(path: str, data: bytes, mode: int, chmod: bool = True) -> bool:
    """Write a new record; False if one is there already (a retried submit). ``chmod``
    False: the caller knows the create gives ``mode`` as it is (``chmod_needed``)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except FileExistsError:
        return False
    try:
        if chmod:
            os.fchmod(fd, mode)  # the umask must not narrow a shared folder's mode
        os.write(fd, data)
    finally:
        os.close(fd)
    return True


#: what an update does with a record, given when the hot path marked it started (None:
#: not marked since its content was written) and the journal it names (``named_journal``):
#: the new record (and a result's JSON text), or None to leave it as it is
Change = Callable[[Record, float | None, str | None], tuple[Record, str | None] | None]


def update(path: str, change: Change, limit: int) -> tuple[Record, bool] | None:
    """Rewrite a record in place under ``flock``: None when there is none; else the
    record now there and whether ``change`` changed it."""
    try:
        fd = os.open(path, _UPDATE)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise
    try:
        _lock(fd)
        try:
            data, info = _read_fd(fd, limit)
        except NotATaskFile:
            return None
        content, marks, journal = split(data)
        old = _parse(content) or {}
        new = change(old, info.st_mtime if marks else None, named_journal(old, journal))
        if new is None:
            return old, False
        record, result_json = new
        body = encode(record, result_json)
        os.pwrite(fd, body, 0)
        os.ftruncate(fd, len(body))
        return record, True
    finally:
        os.close(fd)


def _lock(fd: int) -> None:
    """Take a record's lock without blocking, retried for at most ``LOCK_WAIT`` s: the
    lock only orders our own short rewrites, so a lock somebody else keeps (another
    user of a shared folder) delays an update but never stalls a worker."""
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                logger.warning("A status record's lock stayed held for %g s; updating", LOCK_WAIT)
                return
            time.sleep(0.001)


def move(source: str, target: str) -> bool:
    """Move a record; False if it was not at ``source`` (somebody moved it first)."""
    try:
        os.rename(source, target)
    except FileNotFoundError:
        if os.path.lexists(source):
            raise  # the target's folder is missing: the caller makes it
        return False
    return True


def remove(path: str) -> None:
    """Remove a record if it is there."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def bucket_ends(done: str) -> list[int]:
    """The ends of the ``done/`` folders present, newest first."""
    try:
        names = os.listdir(done)
    except FileNotFoundError:
        return []
    return sorted((int(name) for name in names if name.isdigit()), reverse=True)
