"""Claims: a key taken for ``ttl`` seconds by exactly one of many processes.

A claim is the file ``<root>/.claims/<sha256 of the key>`` holding its expiry time (Unix
seconds). It is created complete and exclusively: the expiry is written to a temporary
file that is then hard-linked to the claim's name, which fails with ``EEXIST`` like an
``O_EXCL`` create when somebody holds the key, so no reader ever sees an empty claim.
An existing claim is read, and an expired one overwritten, only under ``flock``, after
checking that the file locked is still the one at that name; stale claims are swept.

The folder may be shared with other users, so a claim is opened without following a
symlink and without blocking, and only a regular file counts; anything else at a claim's
name (a planted symlink to a file the scheduler could write) is removed, never written
through. A lock is taken without blocking, retried for at most ``LOCK_WAIT`` seconds: a
lock somebody holds for longer means "somebody else is at this claim", and the claim
is not taken, so a held lock can delay a firing but never stall a schedule.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import stat
import time
import uuid

from asynctask_filesys.layout import make_dirs, write_file

FOLDER = ".claims"
#: seconds a claimer retries a held lock before it counts the claim as somebody else's
LOCK_WAIT = 1.0
_OPEN = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY

logger = logging.getLogger("asynctask.filesys")


def claim(root: str, key: str, ttl: float, mode: int) -> bool:
    """Take ``key`` for ``ttl`` seconds; False if someone holds it and it has not expired."""
    folder = os.path.join(root, FOLDER)
    make_dirs((root, folder), mode)
    path = os.path.join(folder, hashlib.sha256(key.encode()).hexdigest())
    expiry = repr(time.time() + ttl).encode()
    tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}")
    write_file(tmp, expiry, mode, sync=False)
    try:
        for _ in range(20):  # bounded: somebody could plant a new link after each removal
            try:
                os.link(tmp, path)
                return True
            except FileExistsError:
                pass
            taken = _take_if_expired(path, expiry)
            if taken is not None:
                return taken
        return False
    finally:
        os.unlink(tmp)


def _open_claim(path: str) -> int | None:
    """A claim file opened for update, or None when it is gone or was not a regular
    file (then it is removed, so that the next link makes a real claim)."""
    try:
        fd = os.open(path, _OPEN)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        _remove_planted(path, "a symbolic link")
        return None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        _remove_planted(path, "not a regular file")
        return None
    return fd


def _remove_planted(path: str, what: str) -> None:
    logger.warning("Removed %s found at the claim %s (claims are regular files)", what, path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # unlink removes the link itself, never its target


def _lock(fd: int, wait: float = LOCK_WAIT) -> bool:
    """Take the claim's lock without blocking, retrying for ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)


def _take_if_expired(path: str, expiry: bytes) -> bool | None:
    """Overwrite an expired claim: True; it holds (or its lock stays held): False; it
    vanished meanwhile: None."""
    fd = _open_claim(path)
    if fd is None:
        return None
    try:
        if not _lock(fd):
            logger.warning("The lock of claim %s stayed held; not taking it", path)
            return False
        if not _still_at(path, fd):
            return None  # swept away while we waited for the lock: try again
        try:
            current = float(os.pread(fd, 64, 0))
        except ValueError:
            current = 0.0
        if current > time.time():
            return False
        os.pwrite(fd, expiry, 0)
        os.ftruncate(fd, len(expiry))
        return True
    finally:
        os.close(fd)


def _still_at(path: str, fd: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def sweep(root: str) -> None:
    """Remove claims expired more than a minute ago (and temporary files an hour old)."""
    folder = os.path.join(root, FOLDER)
    try:
        with os.scandir(folder) as entries:
            names = [e.name for e in entries]
    except FileNotFoundError:
        return
    for name in names:
        path = os.path.join(folder, name)
        with contextlib.suppress(OSError, ValueError):
            if name.startswith(".tmp-"):
                if time.time() - os.stat(path).st_mtime > 3600:
                    os.unlink(path)
                continue
            fd = _open_claim(path)
            if fd is None:
                continue
            try:
                if not _lock(fd, 0.0):
                    continue  # somebody is at it: next sweep
                if _still_at(path, fd) and float(os.pread(fd, 64, 0)) < time.time() - 60:
                    os.unlink(path)
            finally:
                os.close(fd)
