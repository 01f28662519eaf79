"""Knowing what a folder holds without listing it for every task.

A ``Folder`` keeps the names of one folder in a heap, smallest first. It lists the folder
once, then learns of arrivals from inotify (``Watcher``), so taking a task costs the same
whether 100 or 100,000 are waiting. Names taken by another process stay in the heap until
popped; the rename that fails then is how we learn, and we move on. Where inotify is
missing (or ``notify=poll``), the folder is listed again when the heap runs dry, at most
every ``poll`` seconds, and every ``RESYNC`` seconds so late arrivals keep their order.
"""

from __future__ import annotations

import heapq
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

from asynctask_filesys.layout import task_names

logger = logging.getLogger("asynctask.filesys")

#: seconds between listings of a watched folder whose heap is empty (a safety net only)
SAFETY = 1.0
#: seconds between listings of an unwatched folder, to place late arrivals in order
RESYNC = 1.0


class Folder:
    """The names in one folder, smallest first; see the module docstring."""

    def __init__(
        self, path: str, watcher: Watcher, order: Callable[[str], str] | None = None
    ) -> None:
        self.path = path
        self.watcher = watcher
        self.wd: int | None = None
        self.stale = True
        #: the sort key of a name (None: the name itself)
        self._order = order
        self._heap: list[tuple[str, str]] = []
        self._listed_at = -1e9

    def _entry(self, name: str) -> tuple[str, str]:
        return (name if self._order is None else self._order(name), name)

    def push(self, name: str) -> None:
        """A name that arrived (duplicates are harmless: the second take just fails)."""
        heapq.heappush(self._heap, self._entry(name))

    def peek(self) -> str | None:
        """The smallest known name, left in place."""
        self.sync()
        return self._heap[0][1] if self._heap else None

    def pop(self) -> str | None:
        """Remove and return the smallest known name."""
        self.sync()
        return heapq.heappop(self._heap)[1] if self._heap else None

    def sync(self) -> None:
        """List the folder again if our picture of it may be out of date."""
        now = time.monotonic()
        if self.wd is None and self.watcher.active and self.watcher.watch(self):
            self.stale = True
        age = now - self._listed_at
        if self.wd is not None:
            due = self.stale or (not self._heap and age >= SAFETY)
        else:
            due = (not self._heap and age >= self.watcher.poll) or age >= RESYNC
        if due:
            self._heap = [self._entry(name) for name in task_names(self.path)]
            heapq.heapify(self._heap)
            self.stale = False
            self._listed_at = now

    def idle_wait(self) -> float:
        """Seconds an empty consumer may wait before this folder should be listed again."""
        limit = SAFETY if self.wd is not None else self.watcher.poll
        return max(0.0, limit - (time.monotonic() - self._listed_at))


class Watcher:
    """One inotify instance and the folders it watches; without inotify, a short poll."""

    def __init__(self, use_inotify: bool, poll: float) -> None:
        self.poll = poll
        self._folders: dict[int, Folder] = {}
        self._inotify: Any = None
        self._mask = 0
        if use_inotify:
            try:
                from inotify_simple import INotify, flags
            except ImportError:
                logger.debug("inotify_simple is missing; watching folders by polling")
                return
            try:
                self._inotify = INotify()
            except OSError as exc:  # e.g. too many inotify instances for this user
                logger.warning("inotify unavailable (%s); polling every %g s", exc, poll)
                return
            # dropped without close(), close quietly (no ResourceWarning from the file)
            weakref.finalize(self, self._inotify.close)
            self._mask = flags.MOVED_TO | flags.CLOSE_WRITE | flags.ONLYDIR
            self._overflow = flags.Q_OVERFLOW
            self._ignored = flags.IGNORED

    @property
    def active(self) -> bool:
        """Whether arrivals are notified (else folders are polled)."""
        return self._inotify is not None

    def watch(self, folder: Folder) -> bool:
        """Start watching a folder; False if it does not exist (yet)."""
        try:
            wd: int = self._inotify.add_watch(folder.path, self._mask)
        except OSError:
            return False
        self._folders[wd] = folder
        folder.wd = wd
        return True

    def wait(self, seconds: float) -> None:
        """Wait up to ``seconds`` for arrivals (0: take the pending ones) and record them."""
        if self._inotify is None:
            if seconds > 0:
                time.sleep(min(seconds, self.poll))
            return
        timeout = 0 if seconds <= 0 else max(1, int(seconds * 1000))
        for event in self._inotify.read(timeout=timeout):
            if event.mask & self._overflow:
                for folder in self._folders.values():
                    folder.stale = True
                continue
            target = self._folders.get(event.wd)
            if target is None:
                continue
            if event.mask & self._ignored:  # the folder went away
                del self._folders[event.wd]
                target.wd = None
                target.stale = True
            elif event.name and not event.name.startswith("."):
                target.push(event.name)

    def close(self) -> None:
        """Stop watching."""
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        for folder in self._folders.values():
            folder.wd = None
        self._folders.clear()
