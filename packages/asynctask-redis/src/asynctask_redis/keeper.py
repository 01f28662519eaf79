"""The redis transport's side of ``asynctask.liveness``: a key its keeper refreshes.

The keeper of an owner sets ``P:Q:owner:<owner>`` with the consumers' heartbeat expiry
every ``heartbeat_seconds``; a consumer whose id is ``<owner>/<random>`` counts as alive
while that key exists, whatever its own thread does (the scripts' ``alive()``). ``end``
runs the ``END`` script: the owner's tasks back at the head, only the started ones
counted. A server restarted with ``appendonly yes`` keeps the key; the keeper's next beat
reconnects (the transport's ``execute`` replaces a dropped connection at once).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from asynctask.liveness import Liveness
from asynctask_redis import scripts
from asynctask_redis.connection import call

if TYPE_CHECKING:
    from asynctask_redis.transport import RedisTransport


class RedisLiveness(Liveness):
    """Keeps ``owner``'s consumers of one queue alive by refreshing its key."""

    def __init__(self, transport: RedisTransport, queue: str, owner: str) -> None:
        super().__init__(queue, owner, transport.heartbeat_seconds)
        self.transport = transport
        self.key = transport.key(queue, f"owner:{owner}")

    def beat(self) -> None:
        """Refresh the owner's key."""
        t = self.transport
        t.execute(call, "SET", self.key, "1", "PX", t.heartbeat_ttl_ms)

    def end(self, started: Collection[str] | None, finished: Collection[str] = ()) -> int:
        """Hand the owner's tasks back (see ``scripts.END``) and delete its key."""
        # "*": not known, count every one, as the recovery of a dead consumer would
        begun = ["*"] if started is None else sorted(started)
        done = sorted(finished)
        args = [self.transport.status_ttl_ms, len(done), *done, *begun]
        moved: int = self.transport._script(scripts.END, self.queue, self.owner, *args)
        return int(moved)
