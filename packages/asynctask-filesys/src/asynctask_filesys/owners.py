"""Who holds a claimed task, and getting a dead holder's tasks back.

Each consumer owns a folder ``claimed/<pid>-<random>/`` holding the tasks it reserved and
a ``.lock`` file it keeps locked with ``flock`` and touches every ``heartbeat`` seconds.
The owner is dead when its lock can be taken (the kernel drops it the moment the process
dies, however it dies) or when its heartbeat is older than ``lease`` (a frozen process, or
a fork that inherited the lock). A flock needs no pid, so it works across PID namespaces
and cannot be fooled by pid reuse; the lease covers file systems without flock.

Its tasks then go back to ``ready/`` under their old stamp (so at the head) with one more
attempt in their name. Renames are atomic, so two processes recovering the same owner
move each task once.

A consumer whose liveness another process keeps (``asynctask.liveness``: the supervisor
of ``asynctask workers``) names its folder ``<owner>+<random>`` and runs no heartbeat:
the keeper touches ``claimed/.live-<owner>`` instead, and the folder is dead only when
that file is missing or older than ``lease``, whatever its lock says (the keeper hands
a dead child's tasks back itself, counting only the started one, see ``end_owner``).

A folder is built as ``.new-<name>`` and renamed into place with its lock held; a look
for dead owners removes a ``.new-`` folder past the lease whose lock is free (its builder
died), and a builder that lost its half-built folder anyway (stalled past the lease
before its lock) builds another (``_build_folder``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Collection
from typing import Protocol

from asynctask_filesys.layout import TaskName, bumped, dir_mode, task_names

LOCK = ".lock"
_NEW = ".new-"
LIVE = ".live-"
#: times a consumer builds its folder again after a rival's sweep removed it half-built
_BUILD_TRIES = 5
#: between an owner id and the random part in the name of a kept consumer's folder
OWNED = "+"


class OwnerFolder:
    """A consumer's folder in ``claimed/``, locked for as long as the consumer lives."""

    def __init__(self, claimed: str, file_mode: int, owner: str | None = None) -> None:
        # Built under a dot-name and renamed into place already locked, so nobody ever
        # sees it without a held lock and takes it for dead. A rival's sweep removes a
        # ``.new-`` folder past the lease whose lock is free (its builder died); a live
        # builder stalled that long before taking its lock (a loaded machine) finds its
        # folder gone, and builds another: a rival's cleanup never ends a consumer.
        self.name, self._fd = _build_folder(claimed, file_mode, owner)
        self.path = os.path.join(claimed, self.name)
        # Dropped without close(), the lock goes with the object: its tasks come back.
        self._release = weakref.finalize(self, _close_fd, self._fd)

    def beat(self) -> bool:
        """Refresh the heartbeat; False once somebody took our folder for dead."""
        try:
            os.utime(self._fd)
            return os.fstat(self._fd).st_nlink > 0
        except OSError:
            return False

    def close(self) -> None:
        """Remove the folder (it must be empty of tasks by now) and drop the lock."""
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.path, LOCK))
        with contextlib.suppress(OSError):
            os.rmdir(self.path)
        self._release()


def _build_folder(claimed: str, file_mode: int, owner: str | None) -> tuple[str, int]:
    """A new consumer folder's name and its lock's descriptor (see ``OwnerFolder``)."""
    for _ in range(_BUILD_TRIES):
        suffix = uuid.uuid4().hex[:12]
        name = f"{os.getpid()}-{suffix}" if owner is None else f"{owner}{OWNED}{suffix}"
        fd = _build(claimed, name, file_mode)
        if fd is not None:
            return name, fd
    raise FileNotFoundError(
        errno.ENOENT, f"swept by other consumers each of {_BUILD_TRIES} times it was built", claimed
    )


def _build(claimed: str, name: str, file_mode: int) -> int | None:
    """Make ``claimed/<name>`` under ``.new-<name>`` and rename it into place with its
    lock held; the lock's descriptor, or None when a rival's sweep took the half-built
    folder (removed it, or holds its lock to remove it): then build another."""
    building = os.path.join(claimed, _NEW + name)
    os.mkdir(building, dir_mode(file_mode))  # ENOENT here: claimed/ is gone (the caller)
    try:
        fd = os.open(
            os.path.join(building, LOCK),
            os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
            file_mode,
        )
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FileNotFoundError(errno.ENOENT, "swept meanwhile", building) from None
        except OSError:
            pass  # no flock here: the lease alone tells
        os.rename(building, os.path.join(claimed, name))
    except FileNotFoundError:
        os.close(fd)
        shutil.rmtree(building, ignore_errors=True)
        return None
    return fd


def holder_of(folder: str) -> str:
    """Who holds the tasks of a consumer's folder, as ``in_flight`` shows it: the owner id
    of a kept consumer (it names the host), else the folder with its process and host."""
    owner, owned, _ = folder.partition(OWNED)
    if owned:
        return owner
    pid = folder.partition("-")[0]
    return f"consumer {folder} (pid {pid} on {socket.gethostname()})"


def _close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def live_path(claimed: str, owner: str) -> str:
    """The file whose age tells whether ``owner`` lives (kept by its keeper)."""
    return os.path.join(claimed, LIVE + owner)


def touch_live(claimed: str, owner: str, mode: int) -> None:
    """Create or refresh ``owner``'s liveness file."""
    fd = os.open(live_path(claimed, owner), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        os.utime(fd)
    finally:
        os.close(fd)


def _stale(path: str, lease: float) -> bool:
    try:
        return time.time() - os.stat(path).st_mtime > lease
    except FileNotFoundError:
        return True


def _dead(folder: str, lease: float) -> tuple[bool, int | None]:
    """Whether the owner of ``folder`` is dead; the fd holding its lock, if we took it."""
    owner, owned, _ = os.path.basename(folder).partition(OWNED)
    if owned:  # its keeper alone tells: the lock of a dead child is free at once
        return _stale(live_path(os.path.dirname(folder), owner), lease), None
    try:
        fd = os.open(os.path.join(folder, LOCK), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return True, None  # being cleaned up by someone else, or left half-removed
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True, fd
    except BlockingIOError:
        pass
    except OSError:
        pass  # no flock on this file system: the heartbeat decides
    try:
        stale = time.time() - os.fstat(fd).st_mtime > lease
    finally:
        os.close(fd)
    return stale, None


def _abandoned(building: str, lease: float) -> bool:
    """Whether the ``.new-`` folder ``building`` was left by a builder that died: older
    than the lease, its lock free (a live builder holds it from just after the folder is
    made until the rename; ``OwnerFolder`` builds again if it loses one before that)."""
    try:
        if time.time() - os.stat(building).st_mtime <= lease:
            return False
        fd = os.open(os.path.join(building, LOCK), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return os.path.isdir(building)  # no lock file yet (or gone: renamed meanwhile)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # its builder lives, and renames it shortly
    except OSError:
        pass  # no flock on this file system: the age alone tells
    finally:
        os.close(fd)
    return True


def recover_dead(claimed: str, ready: str, lease: float, skip: str | None) -> list[str]:
    """Move the tasks of every dead owner back to ``ready``; return their new names."""
    moved: list[str] = []
    try:
        entries = list(os.scandir(claimed))
    except FileNotFoundError:
        return moved
    for entry in entries:
        if entry.name.startswith(LIVE):
            # a keeper gone for long (its host died): nobody refers to the file any more
            if _stale(entry.path, max(60.0, 4 * lease)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
            continue
        if entry.name == skip or not entry.is_dir(follow_symlinks=False):
            continue
        if entry.name.startswith(_NEW):
            # a consumer that died while building its folder: it held no task
            if _abandoned(entry.path, lease):
                shutil.rmtree(entry.path, ignore_errors=True)
            continue
        if entry.name.startswith("."):
            continue
        dead, fd = _dead(entry.path, lease)
        if not dead:
            continue
        try:
            moved += _hand_back(entry.path, ready, None)
        finally:
            if fd is not None:
                os.close(fd)
    return moved


def _hand_back(
    folder: str, ready: str, started: Collection[str] | None, finished: Collection[str] = ()
) -> list[str]:
    """Move a dead owner's tasks to ``ready``, one attempt more for the started ones
    (all when ``started`` is None), and remove its folder; return the new names."""
    moved: list[str] = []
    for name in task_names(folder):
        new = name
        task_id = TaskName.parse(name).id
        if task_id in finished:  # an ack unlinks at once; nothing should be left, but
            with contextlib.suppress(FileNotFoundError):  # a finished task never runs again
                os.unlink(os.path.join(folder, name))
            continue
        if started is None or task_id in started:
            new = bumped(name)
        with contextlib.suppress(FileNotFoundError):
            os.rename(os.path.join(folder, name), os.path.join(ready, new))
            moved.append(new)
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(folder, LOCK))
    with contextlib.suppress(OSError):
        os.rmdir(folder)
    return moved


def end_owner(
    claimed: str,
    ready: str,
    owner: str,
    started: Collection[str] | None,
    finished: Collection[str] = (),
) -> int:
    """``owner``'s worker is gone: hand back its tasks now, counting only ``started``."""
    moved = 0
    prefix = owner + OWNED
    try:
        entries = [e for e in os.scandir(claimed) if e.name.startswith(prefix)]
    except FileNotFoundError:
        entries = []
    for entry in entries:
        moved += len(_hand_back(entry.path, ready, started, finished))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(live_path(claimed, owner))
    return moved


class Beating(Protocol):
    """Something that proves it lives by being called regularly."""

    def beat(self) -> None:
        """Refresh the heartbeat."""


class Heartbeats:
    """One daemon thread that calls ``beat()`` on every live consumer of a transport.

    Consumers are held weakly: one dropped without ``close()`` stops beating, so its
    tasks come back after the lease. A task's run time never delays a beat.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._members: weakref.WeakSet[Beating] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, member: Beating) -> None:
        """Start beating for ``member`` (and start the thread if needed)."""
        with self._lock:
            self._members.add(member)
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="asynctask-filesys-heartbeat", daemon=True
                )
                self._thread.start()

    def discard(self, member: Beating) -> None:
        """Stop beating for ``member``."""
        with self._lock:
            self._members.discard(member)

    def members(self) -> list[Beating]:
        """The members still alive."""
        with self._lock:
            return list(self._members)

    def stop(self) -> None:
        """Stop the thread."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for member in self.members():
                member.beat()
