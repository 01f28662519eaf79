"""Claims: a key taken for ``ttl`` seconds by exactly one of many processes.

A claim is the file ``<root>/.claims/<sha256 of the key>`` holding its expiry time (Unix
seconds). It is created complete and exclusively: the expiry is written to a temporary
file that is then hard-linked to the claim's name, which fails with ``EEXIST`` like an
``O_EXCL`` create when somebody holds the key, so no reader ever sees an empty claim.
An existing claim is read, and an expired one overwritten, only under ``flock``, after
checking that the file locked is still the one at that name; stale claims are swept.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
import uuid

from asynctask_filesys.layout import make_dirs, write_file

FOLDER = ".claims"


def claim(root: str, key: str, ttl: float, mode: int) -> bool:
    """Take ``key`` for ``ttl`` seconds; False if someone holds it and it has not expired."""
    folder = os.path.join(root, FOLDER)
    make_dirs((root, folder), mode)
    path = os.path.join(folder, hashlib.sha256(key.encode()).hexdigest())
    expiry = repr(time.time() + ttl).encode()
    tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}")
    write_file(tmp, expiry, mode, sync=False)
    try:
        while True:
            try:
                os.link(tmp, path)
                return True
            except FileExistsError:
                pass
            taken = _take_if_expired(path, expiry)
            if taken is not None:
                return taken
    finally:
        os.unlink(tmp)


def _take_if_expired(path: str, expiry: bytes) -> bool | None:
    """Overwrite an expired claim: True; it holds: False; it vanished meanwhile: None."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
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
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if _still_at(path, fd) and float(os.pread(fd, 64, 0)) < time.time() - 60:
                    os.unlink(path)
            finally:
                os.close(fd)
