"""The filesys transport's side of ``asynctask.limits``: a JSON book under a lock file.

A queue's global limits live in ``<queue>/limits.json`` (the starts within the window
and the running slots, ``asynctask.limits.LimitBook``), read and replaced (written
under a temporary name, then renamed) while ``<queue>/limits.lock`` is held with
``flock``. A slot's owner is alive while its liveness file ``claimed/.live-<owner>``
(``asynctask_filesys.keeper``) is younger than ``lease``: a child that died with a slot
frees it once its keeper has ended it or stopped touching the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator

from asynctask.limits import LimitBook, LimitSpec
from asynctask_filesys.layout import QueuePaths
from asynctask_filesys.owners import live_path

BOOK = "limits.json"
LOCK = "limits.lock"


@contextlib.contextmanager
def _locked(paths: QueuePaths, mode: int) -> Iterator[LimitBook]:
    """The queue's book, held under its lock; written back when the block ends."""
    fd = os.open(os.path.join(paths.base, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        path = os.path.join(paths.base, BOOK)
        try:
            with open(path, encoding="utf-8") as file:
                data = json.load(file)
            book = LimitBook(dict(data["starts"]), dict(data["running"]))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            book = LimitBook.empty()  # none yet, or damaged: start afresh
        yield book
        tmp = os.path.join(paths.tmp, f".{BOOK}.{os.getpid()}")
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as file:
            json.dump({"starts": book.starts, "running": book.running}, file)
        os.rename(tmp, path)
    finally:
        os.close(fd)


def take(
    paths: QueuePaths, limit: LimitSpec, holder: str, owner: str | None, lease: float, mode: int
) -> float:
    """``Transport.limit_take`` on the queue's book."""

    def alive(name: str) -> bool:
        try:
            return time.time() - os.stat(live_path(paths.claimed, name)).st_mtime <= lease
        except FileNotFoundError:
            return False

    with _locked(paths, mode) as book:
        return book.take(limit, holder, owner, time.time(), alive)


def free(paths: QueuePaths, holder: str, mode: int) -> None:
    """``Transport.limit_free`` on the queue's book."""
    with _locked(paths, mode) as book:
        book.free(holder)
