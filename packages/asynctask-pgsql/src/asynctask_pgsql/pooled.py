"""The connections of the transport's pool: each keeps one cursor for its calls.

A cursor made for every call (``Connection.execute``) costs a submit more than its own
statement's adaptation: a new cursor looks its parameters' dumpers and its result's
loaders up again. One kept cursor per connection does that once. Measured with
callgrind on the submitting process (instructions, which the machine's load does not
move): a one-row ``execute`` of the submit statement, 127k instructions with a new
cursor, 80k with a kept one. A pooled connection serves one thread at a time, so its
cursor does too.
"""

from __future__ import annotations

from typing import Any

import psycopg


class PooledConnection(psycopg.Connection[Any]):
    """A ``psycopg.Connection`` with one cursor kept for the calls made on it."""

    _kept: psycopg.Cursor[Any] | None = None

    def kept_cursor(self) -> psycopg.Cursor[Any]:
        """This connection's cursor, made on first use (again if it was closed)."""
        cursor = self._kept
        if cursor is None or cursor.closed:
            cursor = self._kept = self.cursor()
        return cursor
