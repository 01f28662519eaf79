"""Waking a ``wait`` when a task's status changes: inotify on its record and journal.

A record leaves ``live/`` when its task becomes final (moved to ``done/`` or
``failed/``), except for the hot path's success, a line in the journal the start's mark
names (``asynctask_filesys.state``). So a waiter watches the record's name leaving
``live/``, the record itself (a mark appended: the journal to follow), and that journal
(a line appended). Without inotify (not Linux, or ``notify=poll``) the waiter sleeps for
its pause instead.

Closing an inotify instance makes the kernel wait for a grace period (0.05-16 ms
measured here), which a ``wait`` paid before returning. So an instance done with is
kept (its watch removed: an idle one sees nothing) for the next ``wait`` of the process,
up to ``KEEP``; only those beyond are closed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from types import TracebackType
from typing import Any

from asynctask_filesys.records import RecordPaths

logger = logging.getLogger("asynctask.filesys")

#: idle inotify instances kept for the next ``wait`` (none watching anything)
KEEP = 8
_idle: list[Any] = []
_idle_lock = threading.Lock()
# A forked child must not share the parent's instances: two readers of one inotify
# queue take each other's events (dropping them closes only the child's descriptors)
os.register_at_fork(after_in_child=_idle.clear)


def _instance() -> Any:
    """An idle inotify instance, or a new one (``OSError`` when the user has too many)."""
    with _idle_lock:
        if _idle:
            return _idle.pop()
    from inotify_simple import INotify

    return INotify()


def _done_with(instance: Any, wds: list[int]) -> None:
    """Keep ``instance`` for a later ``wait``, its watches removed; close it beyond KEEP."""
    try:
        for wd in wds:
            try:
                instance.rm_watch(wd)
            except OSError:  # its file was removed: the kernel dropped the watch
                if wd == wds[0]:
                    raise  # the folder's: the instance may be broken
        instance.read(timeout=0)  # what came before the removal: not for the next waiter
    except OSError:  # the folder went away (its watch with it), or the instance broke
        instance.close()
        return
    with _idle_lock:
        if len(_idle) < KEEP:
            _idle.append(instance)
            return
    instance.close()


class RecordWatch:
    """Watches one task's record (leaving ``live/``, or marked) and the journal its
    mark names; a context manager."""

    def __init__(self, paths: RecordPaths, task_id: str, use_inotify: bool) -> None:
        self.task_id = task_id
        self._inotify: Any = None
        self._wds: list[int] = []  # the folder's first
        self._files: set[int] = set()  # watches of files: any event of theirs wakes
        self._followed: set[str] = set()
        if not use_inotify:
            return
        try:
            from inotify_simple import flags
        except ImportError:
            return
        try:
            self._inotify = _instance()
            # CREATE: a task submitted without a record gets it at its start or cancel
            mask = flags.MOVED_FROM | flags.DELETE | flags.CREATE | flags.ONLYDIR
            self._wds.append(self._inotify.add_watch(paths.live, mask))
        except OSError as exc:  # too many inotify instances or watches for this user
            logger.warning("inotify unavailable for wait (%s); polling", exc)
            self.close()
            return
        self.follow(os.path.join(paths.live, task_id))  # a start's mark names a journal

    def follow(self, path: str) -> bool:
        """Also wake when the file at ``path`` is written (the record, or the journal
        its mark names); True if it was not watched yet (the caller looks again: a
        write before the watch was not seen)."""
        if self._inotify is None or path in self._followed:
            return False
        from inotify_simple import flags

        try:
            wd = self._inotify.add_watch(path, flags.MODIFY)
        except OSError:  # not there (yet, or any more): a look tells which
            return True  # (not noted as followed: a record made later is, see ``wait``)
        self._followed.add(path)
        self._wds.append(wd)
        self._files.add(wd)
        return True

    @property
    def active(self) -> bool:
        """Whether changes wake the waiter (else it polls)."""
        return self._inotify is not None

    def wait(self, seconds: float) -> None:
        """Return when the record moved, or after ``seconds``."""
        if self._inotify is None:
            time.sleep(seconds)
            return
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            events = self._inotify.read(timeout=max(1, int(left * 1000)))
            if any(e.wd in self._files or e.name == self.task_id for e in events):
                return

    def close(self) -> None:
        """Stop watching (the instance kept for the next ``wait``: see the module)."""
        if self._inotify is not None:
            instance, self._inotify = self._inotify, None
            _done_with(instance, self._wds)
            self._wds = []

    def __enter__(self) -> RecordWatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
