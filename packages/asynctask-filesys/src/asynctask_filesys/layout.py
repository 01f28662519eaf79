"""The folder format of ``filesys:``: task file names, a queue's folders, atomic writes.

Under the root, each queue is a folder::

    <queue>/tmp/              files being written; never tasks (renamed away when complete)
    <queue>/ready/            tasks ready now, taken in name order
    <queue>/delayed/          tasks not yet due: their name's stamp is their due time
    <queue>/claimed/<owner>/  tasks a consumer holds; it keeps <owner>/.lock flocked
    <queue>/failed/           <failed stamp>~<task name>, each with a .meta JSON sidecar

A task file holds one JSON object (UTF-8) and is named ``[+R]STAMP-ID[.ATTEMPTS].json``:
``STAMP`` is 19 digits of nanoseconds since the epoch (ready time, or due time in
``delayed/``), ``ID`` is letters, digits, ``_`` and ``-``, ``ATTEMPTS`` counts earlier
deliveries that failed or whose consumer died (absent means 0). ``+R`` marks a task of
priority ``9 - R`` above 0 (``+0`` is priority 9, ``+8`` priority 1; none: priority 0):
``+`` sorts before every digit, so names in ``ready/`` sort by priority, then by stamp.
In ``delayed/`` the prefix is ignored for order (due time alone counts). Another ``*.json`` name
is still a task (its id is its name); a file not ending in ``.json`` goes to the failed
store. Names starting with ``.`` are ignored everywhere.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

_TASK_NAME = re.compile(r"^(?:\+([0-8]))?(\d{19})-([A-Za-z0-9_-]{1,128})(?:\.(\d{1,9}))?\.json$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
META_SUFFIX = ".meta"


@dataclass(frozen=True)
class TaskName:
    """What a task file's name says: its stamp, its id and its earlier attempts."""

    stamp: int | None  # ns since the epoch; None for a foreign name
    id: str
    attempts: int
    is_json: bool  # False for a foreign file that cannot be a task
    priority: int = 0  # 0-9, from the name's "+R" prefix

    @classmethod
    def parse(cls, name: str) -> TaskName:
        """Read a file name; a name outside the pattern still gets a usable id."""
        match = _TASK_NAME.match(name)
        if match:
            rank, stamp, task_id, attempts = match.groups()
            priority = 0 if rank is None else 9 - int(rank)
            return cls(int(stamp), task_id, int(attempts or 0), True, priority)
        stem = name[:-5] if name.endswith(".json") else name
        return cls(None, _UNSAFE.sub("_", stem)[:128] or "task", 0, name.endswith(".json"))

    def format(self, stamp: int | None = None, attempts: int | None = None) -> str:
        """The file name with a new stamp and/or attempt count."""
        stamp = self.stamp if stamp is None else stamp
        attempts = self.attempts if attempts is None else attempts
        suffix = f".{attempts}" if attempts else ""
        prefix = f"+{9 - self.priority}" if self.priority else ""
        return f"{prefix}{stamp or 0:019d}-{self.id}{suffix}.json"


def due_order(name: str) -> str:
    """The order of names in ``delayed/``: the due stamp alone (the priority prefix is
    left out, so that an urgent task not yet due never hides one that is)."""
    return name[2:] if name.startswith("+") else name


def bumped(name: str) -> str:
    """The name of a task whose delivery ended with a dead consumer: one more attempt."""
    task = TaskName.parse(name)
    return task.format(attempts=task.attempts + 1) if task.is_json else name


def failed_name(name: str, failed_ns: int) -> str:
    """The name of a task in the failed store: its failure stamp, then its task name."""
    # File names are limited in bytes (255 on most file systems), not characters: 120
    # two-byte characters are a legal name that, with the stamp and ".meta", is not.
    if len(os.fsencode(name)) > 200:
        name = TaskName.parse(name).format()
    return f"{failed_ns:019d}~{name}"


def original_name(name: str) -> str:
    """The task name inside a failed-store name (a file dropped there keeps its own)."""
    head, sep, rest = name.partition("~")
    return rest if sep and head.isdigit() else name


class StampClock:
    """Stamps for new task names: strictly increasing within the process, so that the
    tasks of one batch, and of one producer, keep their order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def ready(self, count: int) -> list[int]:
        """Stamps for ``count`` tasks ready now."""
        with self._lock:
            first = max(time.time_ns(), self._last + 1)
            self._last = first + count - 1
        return list(range(first, first + count))

    def due(self, count: int, delay: float) -> list[int]:
        """Stamps for ``count`` tasks due ``delay`` seconds from now."""
        first = time.time_ns() + int(delay * 1e9)
        return list(range(first, first + count))


class QueuePaths:
    """The folders of one queue."""

    def __init__(self, root: str, queue: str) -> None:
        self.base = os.path.join(root, queue)
        self.tmp = os.path.join(self.base, "tmp")
        self.ready = os.path.join(self.base, "ready")
        self.delayed = os.path.join(self.base, "delayed")
        self.claimed = os.path.join(self.base, "claimed")
        self.failed = os.path.join(self.base, "failed")

    def all(self) -> tuple[str, ...]:
        """Every folder, parents first."""
        return (self.base, self.tmp, self.ready, self.delayed, self.claimed, self.failed)


def dir_mode(file_mode: int) -> int:
    """A folder's mode for a file mode: searchable wherever it is readable."""
    return file_mode | ((file_mode & 0o444) >> 2)


def make_dirs(paths: tuple[str, ...], file_mode: int) -> None:
    """Create missing folders with the mode of the ``mode`` option (umask aside).

    In a setgid folder (the group-shared setup) a new folder inherits the setgid bit, and
    keeps it: a chmod to the bare mode would clear it, and files made further down would
    then get the creator's group instead of the shared one.
    """
    mode = dir_mode(file_mode)
    for path in paths:
        if not os.path.isdir(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                os.mkdir(path, mode)
            except FileExistsError:
                continue
            inherited = os.stat(path).st_mode & stat.S_ISGID
            os.chmod(path, mode | inherited)


#: seconds a look at the umask and at a folder's default ACL is trusted (``chmod_needed``)
MODE_LOOK_SECONDS = 1.0
_mode_looks: dict[tuple[str, int], tuple[float, bool]] = {}


def _umask() -> int | None:
    """This process's umask, read without changing it (``os.umask`` sets it: not
    thread-safe); None where ``/proc`` does not tell it."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _has_default_acl(folder: str) -> bool:
    """Whether new files in ``folder`` take their permissions from a default ACL (then
    the umask is not what narrows them); True when that cannot be told."""
    try:
        os.getxattr(folder, "system.posix_acl_default")
    except OSError as exc:
        return exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP)
    return True


def chmod_needed(folder: str, mode: int) -> bool:
    """Whether a file created in ``folder`` with ``mode`` may come out with fewer
    permissions, so that an ``fchmod`` must follow its create: when the umask takes
    bits of ``mode`` away, or a default ACL decides. Else the ``fchmod`` would change
    nothing but cost a journaled inode update a file (as much as the create on a busy
    ext4 disk; two a task of a tracked submit: issue 20). Looked at once a
    ``MODE_LOOK_SECONDS`` a folder and mode, so a caller asks once a batch."""
    now = time.monotonic()
    key = (folder, mode)
    known = _mode_looks.get(key)
    if known is not None and now < known[0]:
        return known[1]
    umask = _umask()
    needed = umask is None or mode & umask != 0 or _has_default_acl(folder)
    _mode_looks[key] = (now + MODE_LOOK_SECONDS, needed)
    return needed


def write_file(path: str, data: bytes, mode: int, sync: bool, chmod: bool = True) -> None:
    """Write a new file completely (and to disk when ``sync``); it must not exist.
    ``chmod`` False: the caller knows the create gives ``mode`` as it is
    (``chmod_needed``)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        if chmod:
            os.fchmod(fd, mode)  # the umask must not narrow a shared folder's mode
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)


def sync_dir(path: str) -> None:
    """Make the renames into a folder durable."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class NotATaskFile(OSError):
    """Something in a queue folder that must not be read: not a regular file, or too big.

    The message says what it is, never what it holds (a symlink's target stays unread).
    """


#: how a file another user may have planted is opened: never through a symlink, never
#: blocking (a FIFO with no writer would hang the open), never as a controlling terminal
SAFE_OPEN = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY

_KINDS = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a file")


def read_task_file(path: str, limit: int) -> tuple[bytes, float]:
    """A task file's bytes and modification time (its submission time), read safely.

    Raises ``NotATaskFile`` for anything but a regular file of at most ``limit`` bytes,
    before reading a byte of it: the folder may be shared with other users.

    Three calls and a ``close`` for a task file (issue 12: the consumer's hot path). No
    ``lstat`` before the open: ``O_NOFOLLOW`` refuses a symlink (``ELOOP``),
    ``O_NONBLOCK`` opens a FIFO without waiting for a writer (``fstat`` then refuses
    it), a socket fails to open (``ENXIO``), and a user cannot plant a device node
    (``mknod`` needs ``CAP_MKNOD``; a hard link to one in ``/dev`` crosses file systems,
    and ``protected_hardlinks`` refuses links to files of others). One ``read`` of
    ``st_size + 1`` bytes: a regular file returns fewer only at its end, so a second
    read to see the end is needed only for a file that grew since the ``fstat``.
    """
    try:
        fd = os.open(path, SAFE_OPEN)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotATaskFile("not a regular file (a symbolic link)") from None
        if exc.errno == errno.ENXIO:
            raise NotATaskFile("not a regular file (a socket or FIFO)") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotATaskFile(f"not a regular file ({_kind(info.st_mode)})")
        if info.st_size > limit:
            raise NotATaskFile(
                f"task file is {info.st_size} bytes, over the limit of {limit} bytes "
                "(setting asynctask_max_payload_bytes)",
            )
        want = info.st_size + 1
        data = os.read(fd, want)
        if len(data) == want:  # it grew since the fstat: read on, cut at the limit
            chunks = [data]
            left = limit + 1 - len(data)
            while left > 0 and (chunk := os.read(fd, min(65536, left))):
                chunks.append(chunk)
                left -= len(chunk)
            data = b"".join(chunks)
        if len(data) > limit:
            raise NotATaskFile(f"task file grew past the limit of {limit} bytes while read")
        return data, info.st_mtime
    finally:
        os.close(fd)


def read_file(path: str) -> tuple[bytes, float]:
    """A small file of our own (a ``.meta`` sidecar), read as safely as a task file."""
    return read_task_file(path, 1024 * 1024)


def task_names(folder: str) -> list[str]:
    """Names in a folder that may be tasks (not starting with ``.``); [] if it is missing."""
    return list(iter_task_names(folder))


def iter_task_names(folder: str) -> Iterator[str]:
    """``task_names`` one at a time, so that a caller keeping a page of them (``heapq.
    nsmallest``) never holds a whole folder's names."""
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if not entry.name.startswith("."):
                    yield entry.name
    except FileNotFoundError:
        return


def sweep_tmp(folder: str, age: float = 3600.0) -> None:
    """Remove files a crashed writer left in ``tmp/`` (they never were tasks)."""
    limit = time.time() - age
    for name in task_names(folder):
        path = os.path.join(folder, name)
        with contextlib.suppress(OSError):
            if os.stat(path).st_mtime < limit:
                os.unlink(path)
