"""Waking a ``wait`` when a task's status record leaves ``live/``: inotify on that folder.

A record leaves ``live/`` exactly when its task becomes final (moved to ``done/`` or
``failed/``), so a watch on the record's name leaving that folder sees the change a
waiter waits for. Without inotify (not Linux, or ``notify=poll``) the waiter sleeps for
its pause instead.
"""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import Any

from asynctask_filesys.records import RecordPaths

logger = logging.getLogger("asynctask.filesys")


class RecordWatch:
    """Watches one task's record leave ``live/``; a context manager."""

    def __init__(self, paths: RecordPaths, task_id: str, use_inotify: bool) -> None:
        self.task_id = task_id
        self._inotify: Any = None
        if not use_inotify:
            return
        try:
            from inotify_simple import INotify, flags
        except ImportError:
            return
        try:
            self._inotify = INotify()
            mask = flags.MOVED_FROM | flags.DELETE | flags.ONLYDIR
            self._inotify.add_watch(paths.live, mask)
        except OSError as exc:  # too many inotify instances or watches for this user
            logger.warning("inotify unavailable for wait (%s); polling", exc)
            self.close()

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
            if any(event.name == self.task_id for event in events):
                return

    def close(self) -> None:
        """Stop watching."""
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    def __enter__(self) -> RecordWatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
