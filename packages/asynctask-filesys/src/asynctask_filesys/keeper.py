"""The filesys transport's side of ``asynctask.liveness``: a file its keeper touches.

The keeper of an owner touches ``<queue>/claimed/.live-<owner>`` every ``heartbeat``
seconds; the owner's consumers (folders ``claimed/<owner>+<random>/``) count as alive
while that file is younger than ``lease``, whatever their own thread does. ``end`` hands
their tasks back at once. See ``asynctask_filesys.owners``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from asynctask.liveness import Liveness
from asynctask_filesys.layout import QueuePaths
from asynctask_filesys.oserrors import os_errors
from asynctask_filesys.owners import end_owner, touch_live


class FilesysLiveness(Liveness):
    """Keeps ``owner``'s consumers of one queue alive by touching its liveness file."""

    def __init__(
        self,
        queue: str,
        owner: str,
        interval: float,
        paths: QueuePaths,
        mode: int,
        ensure: Callable[[str], object],
    ) -> None:
        super().__init__(queue, owner, interval)
        self._paths = paths
        self._mode = mode
        self._ensure = ensure

    @os_errors
    def beat(self) -> None:
        """Touch the liveness file (creating the queue's folders if needed)."""
        try:
            touch_live(self._paths.claimed, self.owner, self._mode)
        except FileNotFoundError:
            self._ensure(self.queue)
            touch_live(self._paths.claimed, self.owner, self._mode)

    @os_errors
    def end(self, started: Collection[str] | None, finished: Collection[str] = ()) -> int:
        """Move the owner's tasks back to ``ready/`` and remove its liveness file."""
        p = self._paths
        return end_owner(p.claimed, p.ready, self.owner, started, finished)
