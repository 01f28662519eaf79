"""Final statuses past their time (``asynctask_status_ttl``), deleted by whoever writes them.

A final status gets ``date_forget`` (now + the TTL); reads hide it after that, and the
row is deleted in bounded steps by the processes that write statuses, so that the table
holds what one TTL brings, never the history, and no separate job is needed:

- a pgsql consumer, after each ``FORGET_EVERY`` tasks it finished (and its periodic
  sweep, ``statements.SWEEP``, up to 1,000 a sweep);
- the status store (``asynctask_pgsql.state``), which another transport uses through
  ``asynctask_state``: after each ``FORGET_EVERY`` final statuses it wrote, and at the
  first write (``submitted``/``started``/``settled``/``cancel``) at least ``period``
  seconds after its last delete (``FORGET_PERIOD``, or half the TTL when shorter).
  Never a read (``statuses``, ``wait``): a role that may only SELECT, or a hot standby,
  reads statuses too.

Each delete (``state_sql.FORGET``) takes at most ``limit`` rows, oldest first, through
the index ``asynctask_status_forget``, skipping rows another process is deleting; its
``limit`` is twice the final statuses written since the last one (at least
``FORGET_LIMIT``), so the deletes outpace the writes that made them.
"""

from __future__ import annotations

import time

#: final statuses written between two deletes
FORGET_EVERY = 500
#: rows one delete takes at least (at most twice the final statuses written since the last)
FORGET_LIMIT = 1000
#: seconds between two deletes of the status store at most (when it is called at all)
FORGET_PERIOD = 30.0


def forget_limit(written: int) -> int:
    """The rows one delete may take after ``written`` final statuses."""
    return max(FORGET_LIMIT, 2 * written)


class ForgetPace:
    """When the status store deletes: after ``FORGET_EVERY`` final statuses written, or
    at its first write ``period`` seconds after the last delete (the first write too)."""

    def __init__(self) -> None:
        self.written = 0
        self.next_at = 0.0

    def due(self, ttl: float) -> int:
        """The rows to delete now (0: not yet); counting starts again when due."""
        now = time.monotonic()
        if self.written < FORGET_EVERY and now < self.next_at:
            return 0
        limit = forget_limit(self.written)
        self.written = 0
        self.next_at = now + min(FORGET_PERIOD, max(ttl / 2, 0.1))
        return limit
