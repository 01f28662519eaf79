"""Task statuses in PostgreSQL: the table ``<schema>.asynctask_status`` as a ``StateStore``.

The pgsql transport writes statuses fused with its own statements (see
``asynctask_pgsql.statements``); this store reads them, cancels, waits, and gives the
generic calls (``submitted``/``started``/``settled``) that another transport uses when
its ``asynctask_state`` names a pgsql URI. ``wait`` listens on the status channel, to
which every final state is notified with its task id in the same transaction.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from typing import Any, LiteralString, Protocol, cast

import psycopg
from psycopg import sql

from asynctask.errors import TransportUnavailable
from asynctask.status import (
    FINAL_STATES,
    StartVerdict,
    State,
    StateStore,
    StatusFeed,
    SubmitOptions,
    TaskStatus,
)
from asynctask_pgsql.conninfo import Server
from asynctask_pgsql.forget import ForgetPace
from asynctask_pgsql.schema import status_channel
from asynctask_pgsql.state_sql import CANCEL_HEARD, StateStatements

#: tries of a unique-key submit whose holder committed after the statement's snapshot
UNIQUE_TRIES = 20


class StoreHost(Protocol):
    """What the store needs of its transport (which passes itself)."""

    schema: str
    server: Server
    retry_timeout: float

    def _query(self, query: LiteralString, params: Any) -> list[tuple[Any, ...]]:
        """Run one statement on a pooled connection."""
        ...

    def _ready_pool(self) -> object:
        """Migrate the schema if this is the first call."""
        ...

    def _stored(self) -> bool:
        """Whether the schema exists, asked without creating it."""
        ...

    def _mapped_errors(self) -> AbstractContextManager[None]:
        """Map psycopg's errors to ours."""
        ...


class PgsqlStateStore(StateStore):
    """Statuses in ``asynctask_status``; see the module docstring."""

    def __init__(self, host: StoreHost) -> None:
        self._host = host
        self.sql = StateStatements.for_schema(host.schema)
        self.channel = status_channel(host.schema)
        self._pace = ForgetPace()

    def _forget(self, final: int) -> None:
        """Count ``final`` statuses about to be written; delete those past their time
        when due (``asynctask_pgsql.forget``). Before the call's own statement, so that a
        failure leaves nothing half done. Writes only: reads hide those rows (STATUSES)."""
        self._pace.written += final
        limit = self._pace.due(self.status_ttl)
        if limit:
            self._host._query(self.sql.forget, (limit,))

    # -- reads, cancel, wait -------------------------------------------------------------

    def statuses(self, ids: Sequence[str]) -> list[TaskStatus | None]:
        wanted = [_uuid(task_id) for task_id in ids]
        known = [u for u in wanted if u is not None]
        found: dict[str, TaskStatus] = {}
        # Looking creates nothing: on a schema nobody made, no task is known. Nor does it
        # delete (no _forget): a read-only role or a hot standby reads statuses too.
        if known and self._host._stored():
            for row in self._host._query(self.sql.statuses, {"ids": known}):
                status = _status(row)
                found[status.id] = status
        return [None if u is None else found.get(u.hex) for u in wanted]

    def cancel(self, task_id: str) -> bool:
        found = _uuid(task_id)
        if found is None or not self._host._stored():
            return False
        self._forget(1)
        [(count, told)] = self._host._query(self.sql.cancel, {"id": found, "ttl": self.status_ttl})
        if told:
            # A consumer holds it: by now it asks the server before any start (see
            # CANCEL_HEARD), so no start after this return can miss the cancel.
            time.sleep(CANCEL_HEARD)
        return bool(count)

    def wait(self, task_id: str, timeout: float | None) -> TaskStatus | None:
        """LISTEN on the status channel, mark the task watched, then read: a final state
        reached before is read, one reached after is notified (only watched tasks are)."""
        found = _uuid(task_id)
        if found is None or not self._host._stored():
            return None  # looking creates nothing: no schema, no task
        deadline = None if timeout is None else time.monotonic() + timeout
        self._host._ready_pool()
        with self._host._mapped_errors(), self._listening() as conn:
            conn.execute(self.sql.watch, (found,))
            while True:
                status = self._read(conn, found)
                if status is None or status.final:
                    return status
                left = self.fallback_poll
                if deadline is not None:
                    left = min(left, deadline - time.monotonic())
                    if left <= 0:
                        raise TimeoutError(f"task {task_id} is still {status.state}")
                for note in conn.notifies(timeout=left):
                    if note.payload == found.hex:
                        break

    def _listening(self) -> psycopg.Connection[Any]:
        conn = self._host.server.connect(application_name="asynctask wait")
        conn.autocommit = True
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        return conn

    def _read(self, conn: psycopg.Connection[Any], task_id: uuid.UUID) -> TaskStatus | None:
        rows = conn.execute(self.sql.statuses, {"ids": [task_id]}).fetchall()
        return _status(rows[0]) if rows else None

    def feed(self, queue: str) -> StatusFeed | None:
        """A status feed of ``queue`` (``asynctask_pgsql.statefeed``)."""
        from asynctask_pgsql.statefeed import PgsqlStatusFeed

        return PgsqlStatusFeed(self, queue)

    # -- which queues keep no status ---------------------------------------------------

    def set_tracking(self, queue: str, tracked: bool) -> None:
        self._host._query(self.sql.track if tracked else self.sql.untrack, (queue,))

    def untracked(self, queues: Collection[str]) -> set[str]:
        return {name for (name,) in self._host._query(self.sql.untracked, (list(queues),))}

    # -- the generic calls ---------------------------------------------------------------

    def submitted(
        self, queue: str, ids: Sequence[str], delay: float, options: SubmitOptions
    ) -> list[str]:
        params = {
            "queue": queue,
            "ids": [uuid.UUID(task_id) for task_id in ids],
            "delay": delay,
            "expires": options.expires,
            "unique_key": options.unique_key,
            "ttl": self.status_ttl,
        }
        self._forget(0)
        for _ in range(UNIQUE_TRIES):
            [(written, holder, known)] = self._host._query(self.sql.submitted, params)
            answer = held_by(written, holder, known, ids)
            if answer is not None:
                return answer
        raise unique_key_busy(options.unique_key, queue)

    def started(self, queue: str, task_id: str, attempt: int) -> StartVerdict:
        params = {"id": uuid.UUID(task_id), "attempt": attempt, "ttl": self.status_ttl}
        self._forget(0)
        rows = self._host._query(self.sql.started, params)
        if not rows:
            return "run"  # a task this store never had: it runs, untracked
        state, still_open, lapsed, _ = rows[0]
        if lapsed:
            return "expired"
        if not still_open and state in ("cancelled", "expired"):
            return cast(StartVerdict, state)
        return "run"

    def settled(
        self,
        queue: str,
        task_id: str,
        state: State,
        attempts: int,
        *,
        error: str | None = None,
        result_json: str | None = None,
    ) -> None:
        params = {
            "id": uuid.UUID(task_id),
            "state": state,
            "attempts": attempts,
            "error": error,
            "result": result_json,
            "final": state in FINAL_STATES,
            "ttl": self.status_ttl,
        }
        self._forget(1 if state in FINAL_STATES else 0)
        self._host._query(self.sql.settled, params)

    def failing(
        self, queue: str, task_id: str, attempts: int, where: str, error: str
    ) -> bool | None:
        """Note ``where`` in the row of a running task about to be moved into its
        transport's failed store (``FAILING``); True if it was cancelled."""
        key = _uuid(task_id)
        if key is None:
            return None
        rows = self._host._query(self.sql.failing, {"id": key, "where": where, "error": error})
        return True if rows and rows[0][0] else None

    def confirm_failed(self, queue: str, task_id: str, where: str) -> None:
        """``failed`` for a task still running with that note (``CONFIRM_FAILED``)."""
        key = _uuid(task_id)
        if key is not None:
            self._host._query(self.sql.confirm_failed, {"id": key, "where": where})

    def purged(self, queue: str, ids: Sequence[str]) -> None:
        wanted = [u for u in (_uuid(task_id) for task_id in ids) if u is not None]
        if wanted and self._host._stored():
            self._host._query(self.sql.purged, {"ids": wanted})


def held_by(written: int, holder: str | None, known: bool, ids: Sequence[str]) -> list[str] | None:
    """The ids to give the caller after a status insert: ours when written, else the
    unique key's holder, else ours when the id was known already (a retried submit);
    ``None``: the holder is not visible yet (committed after the snapshot): try again."""
    if written:
        return list(ids)
    if holder is not None:
        return [holder]
    if known:
        return list(ids)
    return None


def unique_key_busy(key: str | None, queue: str) -> TransportUnavailable:
    """The key was taken and freed again under every try: retryable, as an outage is."""
    return TransportUnavailable(
        f"unique key {key!r} of queue {queue!r} changed hands {UNIQUE_TRIES} times in a "
        "row while submitting; submit again"
    )


def _uuid(task_id: str) -> uuid.UUID | None:
    """Ids that are not uuids name no task here."""
    try:
        return uuid.UUID(task_id)
    except (ValueError, TypeError, AttributeError):
        return None


def _status(row: tuple[Any, ...]) -> TaskStatus:
    task_id, queue, state, attempts, submitted, started, finished, error, result, failing = row
    return TaskStatus(
        id=task_id,
        queue=queue,
        state=state,
        attempts=attempts,
        submitted_at=submitted,
        started_at=started,
        finished_at=finished,
        error=error,
        result=None if result is None else json.loads(result),
        failing=failing,
    )
