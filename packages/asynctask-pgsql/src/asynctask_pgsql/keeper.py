"""The pgsql transport's side of ``asynctask.liveness``: a row its keeper beats.

The keeper of an owner upserts ``asynctask_owner (owner, date_beat)`` every
``owner_lease / 4`` seconds, on a pooled connection (any one: a cut connection costs
nothing, the next beat takes another). Rows reserved by the owner's consumers carry
``keeper = id`` of that row, and the sweep leaves them alone while ``date_beat`` is
younger than ``owner_lease`` (server clock), whatever the consumers' own connections go
through. ``end`` deletes the row and hands the rows back in one statement, counting only
the started ones.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from typing import TYPE_CHECKING

from asynctask.liveness import Liveness

if TYPE_CHECKING:
    from asynctask_pgsql.transport import PgsqlTransport


class PgsqlLiveness(Liveness):
    """Keeps ``owner``'s consumers alive by beating its ``asynctask_owner`` row."""

    def __init__(self, transport: PgsqlTransport, queue: str, owner: str) -> None:
        super().__init__(queue, owner, transport.owner_lease / 4)
        self.transport = transport

    def beat(self) -> None:
        """Upsert the owner's row with the server's ``now()``."""
        self.transport._query(self.transport.sql.beat, (self.owner,))

    def end(self, started: Collection[str] | None, finished: Collection[str] = ()) -> int:
        """Delete the owner's row and hand its tasks back (``END_OWNER``)."""
        params = {
            "owner_name": self.owner,
            "all": started is None,
            "started": _uuids(started or ()),
            "finished": _uuids(finished),
        }
        [(moved, _)] = self.transport._query(self.transport.sql.end_owner, params)
        return int(moved)


def _uuids(ids: Collection[str]) -> list[uuid.UUID]:
    out = []
    for text in ids:
        try:
            out.append(uuid.UUID(hex=text))
        except ValueError:
            continue  # not one of ours: no row has it
    return out
