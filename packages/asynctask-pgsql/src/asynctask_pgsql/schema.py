"""The tables of the pgsql transport and the one migration that makes them.

Version 1 is the original ``rex.asynctask`` layout: ``asynctask.asynctask_queue (id
BIGSERIAL, queue_name TEXT, payload JSON, date_submitted TIMESTAMP)``, the version kept as
the schema's comment ``'version: 1'`` (before rex.asynctask 0.6.0 the table sat in
``public``). Version 2 is ours. A new database gets the version-1 table first and then the
same upgrade an adopted table gets, so both paths are one path.

The migration runs in one transaction under an advisory lock, so many processes starting
at once on an empty database create the schema exactly once; a process that finds the
version current takes no lock at all.

Its statements lock the queue table (``CREATE INDEX IF NOT EXISTS`` takes a SHARE lock
even when the index is there, ``ALTER TABLE`` an ACCESS EXCLUSIVE one), and a lock
request waits in line: every INSERT, UPDATE and DELETE that comes after it waits behind
it. Behind a VACUUM (which holds SHARE UPDATE EXCLUSIVE for as long as it works) or a
long transaction, a migration that simply waited would stop every submit and reserve on
the table for that long. So each try waits at most ``LOCK_TRY`` seconds for a lock
(``lock_timeout``), rolls back, and is tried again after a pause, during which the
others go on, until ``wait`` seconds have passed (``SchemaBusy`` then).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from typing import Any, LiteralString

import psycopg

logger = logging.getLogger("asynctask.pgsql")

#: the version this package writes and understands (kept as the schema's comment)
SCHEMA_VERSION = 2

_VERSION = re.compile(r"^version: (\d+)$")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


#: seconds one try of a migration waits for a table lock before it lets the others by
LOCK_TRY = 0.5


class SchemaVersionError(psycopg.ProgrammingError):
    """The schema belongs to a newer asynctask-pgsql (mapped by the transport)."""


class SchemaBusy(psycopg.OperationalError):
    """The migration could not take its table locks in time (mapped by the transport to a
    ``TransportUnavailable``: a later call tries again)."""


def check_schema_name(text: str) -> str:
    """Parse the ``schema`` URI option: a plain lower-case SQL identifier."""
    if not _SCHEMA_NAME.match(text):
        raise ValueError("use lower-case letters, digits and underscores, at most 63")
    return text


def sql(template: str, schema: str) -> LiteralString:
    """``template`` with ``{s}`` replaced by the (checked, plain) schema name."""
    # mypy reads LiteralString as str; the schema name is checked, so this text is safe SQL.
    # ``{c}``: the status channel (letters, digits, ``_``, ``:`` or an md5: a safe literal).
    checked = check_schema_name(schema)
    return template.replace("{s}", checked).replace("{c}", status_channel(checked))


def channel(schema: str, queue: str) -> str:
    """The LISTEN/NOTIFY channel of a queue; the same as SQL ``{s}.asynctask_channel()``."""
    name = f"{schema}.{queue}"
    return name if len(name.encode()) <= 63 else hashlib.md5(name.encode()).hexdigest()


def status_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel of final task states (payload: the task id, 32 hex
    digits). A ``:`` never appears in a queue's channel, so the two never meet."""
    name = f"{schema}:status"
    return name if len(name.encode()) <= 63 else hashlib.md5(name.encode()).hexdigest()


def _key(text: str, bits: int) -> int:
    value = int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big")
    return value & ((1 << (bits - 1)) - 1)


def migration_lock_key(schema: str) -> int:
    """The advisory lock (one bigint) held while the schema is migrated."""
    return _key(f"asynctask migrate {schema}", 64)


def vacuum_lock_key(schema: str) -> int:
    """The session advisory lock (one bigint) of the process vacuuming the schema's tables
    (``asynctask_pgsql.vacuum``, when the server's autovacuum is off)."""
    return _key(f"asynctask vacuum {schema}", 64)


def sweep_lock_class(schema: str) -> int:
    """The first key of the transaction lock ``(class, hashtext(queue))`` that lets one
    consumer at a time sweep a queue for dead consumers' rows."""
    return _key(f"asynctask sweep {schema}", 32)


def limit_lock_class(schema: str) -> int:
    """The first key of the transaction lock ``(class, hashtext(queue))`` held while a
    queue's global limits are read and counted (``asynctask.limits``)."""
    return _key(f"asynctask limit {schema}", 32)


def consumer_lock_class(schema: str) -> int:
    """The first key of each consumer's session advisory lock ``(class, consumer id)``."""
    return _key(f"asynctask consumer {schema}", 32)


_CREATE_V1 = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE {s}.asynctask_queue (
    id BIGSERIAL PRIMARY KEY,
    queue_name TEXT NOT NULL,
    payload JSON NOT NULL,
    date_submitted TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
"""

# jsonb cannot hold the escape \u0000 that json can: such payloads move to payload_text.
_UPGRADE_V1 = """
DROP INDEX IF EXISTS {s}.idx_asynctask_queue_name;
ALTER TABLE {s}.asynctask_queue ADD COLUMN payload_text TEXT;
UPDATE {s}.asynctask_queue SET payload_text = payload::text
    WHERE strpos(payload::text, '\\u0000') > 0;
ALTER TABLE {s}.asynctask_queue
    ALTER COLUMN payload TYPE JSONB
        USING CASE WHEN payload_text IS NULL THEN payload::jsonb ELSE '{}' END,
    ALTER COLUMN payload SET DEFAULT '{}',
    ALTER COLUMN date_submitted TYPE TIMESTAMPTZ,
    ALTER COLUMN date_submitted SET DEFAULT now(),
    ADD COLUMN task_id UUID NOT NULL DEFAULT gen_random_uuid(),
    ADD COLUMN state TEXT NOT NULL DEFAULT 'queued'
        CONSTRAINT asynctask_queue_state CHECK (state IN ('queued', 'reserved', 'failed')),
    ADD COLUMN date_available TIMESTAMPTZ NOT NULL DEFAULT now(),
    ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN owner INTEGER,
    ADD COLUMN error TEXT,
    ADD COLUMN date_failed TIMESTAMPTZ,
    SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.02);
UPDATE {s}.asynctask_queue SET date_submitted = now() WHERE date_submitted IS NULL;
ALTER TABLE {s}.asynctask_queue ALTER COLUMN date_submitted SET NOT NULL;
"""

# Everything below is idempotent and re-run by every migration. The last object it
# creates is ``_NEWEST``: a version-2 schema without it is brought up to date in place
# (added indexes never change the version, so older processes keep working beside it).
_ENSURE_V2 = """
CREATE UNIQUE INDEX IF NOT EXISTS asynctask_queue_task_id ON {s}.asynctask_queue (task_id);
CREATE INDEX IF NOT EXISTS asynctask_queue_ready
    ON {s}.asynctask_queue (queue_name, date_available, id) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS asynctask_queue_reserved
    ON {s}.asynctask_queue (queue_name) WHERE state = 'reserved';
CREATE INDEX IF NOT EXISTS asynctask_queue_failed
    ON {s}.asynctask_queue (queue_name, date_failed, id) WHERE state = 'failed';
CREATE TABLE IF NOT EXISTS {s}.asynctask_claim (
    key TEXT PRIMARY KEY,
    date_expires TIMESTAMPTZ NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS {s}.asynctask_consumer_id AS INTEGER CYCLE;
CREATE TABLE IF NOT EXISTS {s}.asynctask_owner (
    id INTEGER GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner TEXT NOT NULL UNIQUE,
    date_beat TIMESTAMPTZ NOT NULL DEFAULT now()
);
ALTER TABLE {s}.asynctask_queue ADD COLUMN IF NOT EXISTS keeper INTEGER;
-- the global limits of queues (asynctask.limits): starts within a rate's window
-- (kind 'start') and running slots (kind 'run', freed with their owner's liveness)
CREATE TABLE IF NOT EXISTS {s}.asynctask_limit (
    queue_name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('start', 'run')),
    holder TEXT NOT NULL,
    owner TEXT,
    date_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    date_expires TIMESTAMPTZ,
    PRIMARY KEY (queue_name, kind, holder)
);
-- the task's string headers (its signature): added in place, older code ignores it
ALTER TABLE {s}.asynctask_queue ADD COLUMN IF NOT EXISTS headers JSONB;
CREATE OR REPLACE FUNCTION {s}.asynctask_channel(queue TEXT) RETURNS TEXT
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN octet_length('{s}.' || queue) <= 63 THEN '{s}.' || queue
                ELSE md5('{s}.' || queue) END
$$;
CREATE OR REPLACE FUNCTION {s}.asynctask_notify() RETURNS TRIGGER
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify({s}.asynctask_channel(queue_name), '')
    FROM (SELECT DISTINCT queue_name FROM inserted WHERE state = 'queued') AS q;
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS asynctask_notify ON {s}.asynctask_queue;
CREATE TRIGGER asynctask_notify AFTER INSERT ON {s}.asynctask_queue
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT
    WHEN (current_setting('asynctask.notify', true) IS DISTINCT FROM 'off')
    EXECUTE FUNCTION {s}.asynctask_notify();
-- task status (asynctask.status, issue 16): all added in place, older code ignores them
ALTER TABLE {s}.asynctask_queue ADD COLUMN IF NOT EXISTS priority SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE {s}.asynctask_queue ADD COLUMN IF NOT EXISTS date_expires TIMESTAMPTZ;
CREATE INDEX IF NOT EXISTS asynctask_queue_urgent
    ON {s}.asynctask_queue (queue_name, priority DESC, date_available, id)
    WHERE state = 'queued' AND priority > 0;
CREATE TABLE IF NOT EXISTS {s}.asynctask_status (
    task_id UUID PRIMARY KEY,
    queue_name TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    date_submitted TIMESTAMPTZ NOT NULL DEFAULT now(),
    date_started TIMESTAMPTZ,
    date_finished TIMESTAMPTZ,
    date_expires TIMESTAMPTZ,
    date_forget TIMESTAMPTZ,
    error TEXT,
    result TEXT,
    unique_key TEXT,
    watched BOOLEAN NOT NULL DEFAULT false
) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.01,
        autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE {s}.asynctask_status ADD COLUMN IF NOT EXISTS watched BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE {s}.asynctask_status ADD COLUMN IF NOT EXISTS failing TEXT;
CREATE UNIQUE INDEX IF NOT EXISTS asynctask_status_unique
    ON {s}.asynctask_status (queue_name, unique_key) WHERE unique_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS {s}.asynctask_untracked (queue_name TEXT PRIMARY KEY);
CREATE INDEX IF NOT EXISTS asynctask_status_forget
    ON {s}.asynctask_status (date_forget) WHERE date_forget IS NOT NULL;
COMMENT ON SCHEMA {s} IS 'version: 2';
"""

# Objects added to ``_ENSURE_V2`` after version 2 shipped: the owner table and the
# ``keeper`` column (asynctask.liveness), the unique task-id index (idempotent submit),
# the ``headers`` column (signed tasks), the ``asynctask_limit`` table (global limits)
# and the task status (``priority``, ``date_expires``, the tables ``asynctask_status``
# and ``asynctask_untracked``, whose last index is ``_NEWEST``). All additive, so a
# version-2 schema lacking any of them is completed in place rather than called a new
# version (older processes keep working).
#: the newest index ``_ENSURE_V2`` adds: its absence means the schema needs ``_ENSURE_V2``
_NEWEST = "asynctask_status_forget"

_READ_VERSION = """
SELECT obj_description(n.oid, 'pg_namespace'), to_regclass(%(table)s)::text,
       (SELECT count(*) FROM pg_attribute
        WHERE attrelid = to_regclass(%(table)s) AND attname = 'state' AND NOT attisdropped),
       to_regclass(%(owners)s) IS NOT NULL AND to_regclass(%(newest)s) IS NOT NULL
       AND to_regclass(%(limits)s) IS NOT NULL
       AND EXISTS (SELECT 1 FROM pg_attribute
        WHERE attrelid = to_regclass(%(table)s) AND attname = 'keeper' AND NOT attisdropped)
       AND EXISTS (SELECT 1 FROM pg_attribute
        WHERE attrelid = to_regclass(%(table)s) AND attname = 'headers' AND NOT attisdropped)
       AND EXISTS (SELECT 1 FROM pg_attribute
        WHERE attrelid = to_regclass(%(status)s) AND attname = 'watched' AND NOT attisdropped)
       AND EXISTS (SELECT 1 FROM pg_attribute
        WHERE attrelid = to_regclass(%(status)s) AND attname = 'failing' AND NOT attisdropped)
FROM (SELECT 1) one LEFT JOIN pg_namespace n ON n.nspname = %(schema)s
"""


def _read(conn: psycopg.Connection[Any], schema: str) -> tuple[int | None, bool, bool]:
    """(version from the comment or None, whether the table exists, whether it is v2).

    A version-2 schema that lacks the owner table, the ``keeper`` column or ``_NEWEST``
    reads as version None: not yet current.
    """
    names = {
        "table": f"{schema}.asynctask_queue",
        "owners": f"{schema}.asynctask_owner",
        "limits": f"{schema}.asynctask_limit",
        "newest": f"{schema}.{_NEWEST}",
        "status": f"{schema}.asynctask_status",
        "schema": schema,
    }
    row = conn.execute(_READ_VERSION, names).fetchone()
    assert row is not None
    comment, found, v2, complete = row
    match = _VERSION.match(comment or "")
    version = int(match.group(1)) if match else None
    if version == SCHEMA_VERSION and not complete:
        version = None
    return version, found is not None, bool(v2)


def migrate(conn: psycopg.Connection[Any], schema: str, wait: float = 60.0) -> str:
    """Bring ``schema`` to ``SCHEMA_VERSION``; return what was done, for logs and tests.

    ``conn`` is an autocommit connection. Raises ``SchemaVersionError`` for a schema
    written by a newer version, ``SchemaBusy`` when its tables' locks could not be had
    within ``wait`` seconds (see the module docstring), and psycopg errors (a missing
    privilege) as they come.
    """
    version, _, _ = _read(conn, schema)
    if version == SCHEMA_VERSION:
        return "current"
    deadline = time.monotonic() + wait
    pause = 0.05
    while True:
        try:
            return _migrate_once(conn, schema)
        except psycopg.errors.LockNotAvailable as exc:
            if time.monotonic() + pause > deadline:
                raise SchemaBusy(
                    f"the migration of schema {schema!r} could not lock its tables within "
                    f"{wait:g} s: another session holds them (a VACUUM or a long "
                    "transaction: see pg_stat_activity); the next call tries again"
                ) from exc
            logger.info(
                "migration of schema %s: a table is locked by another session (%s); "
                "trying again in %.2f s",
                schema,
                str(exc).strip(),
                pause,
            )
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


def _migrate_once(conn: psycopg.Connection[Any], schema: str) -> str:
    """One try of ``migrate``: one transaction, each lock waited for ``LOCK_TRY`` s."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (migration_lock_key(schema),))
        # after the advisory lock: a process waiting for another's migration waits whole
        conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{LOCK_TRY * 1000:.0f}ms",))
        version, found, v2 = _read(conn, schema)
        if version is not None and version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"schema {schema!r} is at version {version}, newer than this asynctask-pgsql "
                f"(version {SCHEMA_VERSION}); upgrade the asynctask-pgsql package"
            )
        if version == SCHEMA_VERSION:
            return "current"
        action = "upgraded"
        if not found and schema == "asynctask" and _original_in_public(conn):
            conn.execute("CREATE SCHEMA IF NOT EXISTS asynctask")
            conn.execute("ALTER TABLE public.asynctask_queue SET SCHEMA asynctask")
            action, found = "adopted public.asynctask_queue", True
        elif not found:
            conn.execute(sql(_CREATE_V1, schema))
            action = "created"
        elif not v2:
            action = f"adopted {schema}.asynctask_queue"
        if not v2:
            conn.execute(sql(_UPGRADE_V1, schema))
        conn.execute(sql(_ENSURE_V2, schema))
        return action


def _original_in_public(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass('public.asynctask_queue')"
        " AND attname IN ('queue_name', 'payload', 'date_submitted') AND NOT attisdropped"
    ).fetchone()
    return row is not None and row[0] == 3
