"""The connections of the transport's pool: a kept cursor, and the one-task submit sent
through libpq directly.

A one-by-one submit is one short statement whose answer nobody reads, and the client's
own work is a large part of its time (on 2 busy cores, every microsecond of CPU is
several of wall time). Measured with callgrind on the submitting process (instructions,
which the machine's load does not move), for one ``execute`` of the submit statement
with its 10 parameters:

- psycopg with a new cursor per call (``Connection.execute``): 127k instructions;
- psycopg with a kept cursor: 80k (a new cursor looks its dumpers and loaders up again;
  psycopg's cursor machinery alone costs about 45k per call, each parameter 3.5k);
- libpq's ``exec_prepared`` through ``Connection.pgconn`` (psycopg's documented
  low-level access), the parameters as text: about 10k.

So ``run_prepared`` prepares the statement once per connection and sends it with
``PGconn.exec_prepared``: a blocking libpq call that releases the GIL, as a one-row
INSERT is short. Errors come back as psycopg's own exceptions (``error_from_result``),
and a broken connection leaves libpq's status bad, which the pool sees when it takes
the connection back. Every other statement goes through the kept cursor. A consumer
sends its RESERVE the same way (``exec_prepared``), on its own connection.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import errors, pq

_NAMED = re.compile(r"%\((\w+)\)s")
#: SQLSTATE invalid_sql_statement_name: "prepared statement ... does not exist"
_UNKNOWN_STATEMENT = b"26000"


class Prepared:
    """A statement written with ``%(name)s`` placeholders, as libpq takes it: ``$n``
    placeholders (one per distinct name) and the names in their order."""

    def __init__(self, name: str, query: str) -> None:
        self.name = name.encode()
        self.names: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match[1] not in self.names:
                self.names.append(match[1])
            return f"${self.names.index(match[1]) + 1}"

        self.query = _NAMED.sub(number, query).encode()

    def encode(self, params: dict[str, Any]) -> list[bytes | None]:
        """The parameters as libpq's text format: str as UTF-8, bool as ``t``/``f``,
        numbers as the built-in types write them (a float's ``repr`` is exact; an int or
        float subclass such as an ``IntEnum`` priority writes itself otherwise), None as
        NULL."""
        out: list[bytes | None] = []
        for name in self.names:
            value = params[name]
            if value is None:
                out.append(None)
            elif isinstance(value, str):
                out.append(value.encode())
            elif isinstance(value, bool):
                out.append(b"t" if value else b"f")
            elif isinstance(value, int):
                out.append(int.__repr__(value).encode())
            elif isinstance(value, float):
                out.append(float.__repr__(value).encode())
            else:
                out.append(str(value).encode())
        return out


class PooledConnection(psycopg.Connection[Any]):
    """A ``psycopg.Connection`` with one cursor kept for the calls made on it, and
    statements prepared on it once (``run_prepared``)."""

    _kept: psycopg.Cursor[Any] | None = None
    _ready: set[bytes] | None = None

    def kept_cursor(self) -> psycopg.Cursor[Any]:
        """This connection's cursor, made on first use (again if it was closed)."""
        cursor = self._kept
        if cursor is None or cursor.closed:
            cursor = self._kept = self.cursor()
        return cursor

    def run_prepared(self, statement: Prepared, params: dict[str, Any]) -> None:
        """Run ``statement`` (prepared on this connection at its first use) with
        ``params``; its answer is not read. Raises psycopg's errors."""
        ready = self._ready
        if ready is None:
            ready = self._ready = set()
        exec_prepared(self, ready, statement, params)


def exec_prepared(
    conn: psycopg.Connection[Any], ready: set[bytes], statement: Prepared, params: dict[str, Any]
) -> pq.abc.PGresult:
    """Run ``statement`` on ``conn`` with ``params``, preparing it first unless its name is
    in ``ready`` (the names prepared on this connection, kept by the caller); its result.
    Raises psycopg's errors: ``OperationalError`` for a lost connection."""
    pgconn = conn.pgconn
    values = statement.encode(params)
    for _ in range(2):
        if statement.name not in ready:
            _check(conn, pgconn.prepare(statement.name, statement.query))
            ready.add(statement.name)
        # NULLs are None, as psycopg's own cursor sends them (its stub omits None)
        result = pgconn.exec_prepared(statement.name, values)  # type: ignore[arg-type]
        if result.error_field(pq.DiagnosticField.SQLSTATE) != _UNKNOWN_STATEMENT:
            break
        # forgotten by the server (DISCARD ALL, a pooler between us): prepared again
        ready.discard(statement.name)
    _check(conn, result)
    return result


def _check(conn: psycopg.Connection[Any], result: pq.abc.PGresult) -> None:
    if result.status in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK):
        return
    if conn.pgconn.status == pq.ConnStatus.BAD:
        # a lost connection, as psycopg's own execute reports one (the pool drops it)
        message = (result.error_message or conn.pgconn.error_message).decode(errors="replace")
        raise psycopg.OperationalError(message.strip())
    raise errors.error_from_result(result, encoding=conn.info.encoding)
