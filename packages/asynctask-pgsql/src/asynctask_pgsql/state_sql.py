"""The statements of the task-status store (``asynctask_pgsql.state``), one round trip each.

The queue's own statements (``asynctask_pgsql.statements``) write statuses fused with the
tasks; these read them, cancel, and give the generic ``StateStore`` calls that another
transport (``asynctask_state``) uses for tasks that are not in this database's queue
table. Final states set ``date_forget`` (TTL), free the unique key and NOTIFY ``{c}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import LiteralString

from asynctask_pgsql.schema import sql

#: seconds ``cancel`` waits, after it told a consumer of a reserved task, before it
#: returns; a consumer starts a prefetched task without asking the server for
#: announcements if it last asked less than this long before (see
#: ``PgsqlConsumer._start_later``): a cancel committed after that question has then not
#: returned yet, and one committed before it was in the answer.
CANCEL_HEARD = 0.005

_FINAL = """date_finished = now(), date_forget = now() + make_interval(secs => %(ttl)s::float8),
        unique_key = NULL"""

_FINAL_STATES = "('succeeded', 'failed', 'cancelled', 'expired')"

_TOLD = "CASE WHEN s.watched THEN pg_notify('{c}', replace(s.task_id::text, '-', '')) END"

# A queued task past its expiry reads ``expired`` (the next reserve makes it so); a
# queued or delayed one reads from its queue row whether it is due yet.
STATUSES = """
SELECT replace(s.task_id::text, '-', ''), s.queue_name,
    CASE WHEN s.state IN ('queued', 'delayed') AND s.date_expires <= now() THEN 'expired'
         WHEN s.state IN ('queued', 'delayed') AND q.date_available IS NOT NULL THEN
             CASE WHEN q.date_available > now() THEN 'delayed' ELSE 'queued' END
         ELSE s.state END,
    s.attempts,
    extract(epoch FROM s.date_submitted)::float8,
    extract(epoch FROM s.date_started)::float8,
    extract(epoch FROM CASE WHEN s.state IN ('queued', 'delayed')
                             AND s.date_expires <= now() THEN s.date_expires
                            ELSE s.date_finished END)::float8,
    s.error, s.result, CASE WHEN s.state = 'running' THEN s.failing END
FROM {s}.asynctask_status AS s
LEFT JOIN LATERAL (
    SELECT q.date_available FROM {s}.asynctask_queue AS q
    WHERE q.task_id = s.task_id AND (q.state = 'queued') IS TRUE LIMIT 1) AS q ON true
WHERE s.task_id = ANY(%(ids)s::uuid[]) AND (s.date_forget IS NULL OR s.date_forget > now())
"""

# A waiting task's row goes at once (it never runs); a reserved one stays for its
# consumer, whose ``start`` drops it, or whose supervisor stops it while it runs. Its
# consumer hears of it on the queue's channel (``cancel <id>``): a consumer that starts
# prefetched tasks without waiting (``statements.START_RUNNING``) asks first, unless it
# asked less than ``CANCEL_HEARD`` seconds ago; so ``cancel`` returns that long after
# this statement when it told a consumer (the second count).
CANCEL = f"""
WITH hit AS (
    UPDATE {{s}}.asynctask_status AS s
    SET state = 'cancelled', {_FINAL}
    WHERE s.task_id = %(id)s::uuid AND s.date_finished IS NULL
      AND NOT (s.state IN ('queued', 'delayed') AND coalesce(s.date_expires <= now(), false))
    RETURNING s.task_id, s.queue_name, {_TOLD}
), gone AS (
    DELETE FROM {{s}}.asynctask_queue AS q
    WHERE q.task_id = ANY(ARRAY(SELECT task_id FROM hit)) AND (q.state = 'queued') IS TRUE
), told AS (
    SELECT pg_notify({{s}}.asynctask_channel(q.queue_name),
                     'cancel ' || replace(q.task_id::text, '-', ''))
    FROM {{s}}.asynctask_queue AS q
    WHERE q.task_id = ANY(ARRAY(SELECT task_id FROM hit)) AND (q.state = 'reserved') IS TRUE
), fed AS (
    SELECT pg_notify({{s}}.asynctask_channel(hit.queue_name),
                     'cancel ' || replace(hit.task_id::text, '-', ''))
    FROM hit
    WHERE hit.task_id <> ALL(ARRAY(
        SELECT q.task_id FROM {{s}}.asynctask_queue AS q
        WHERE q.task_id = ANY(ARRAY(SELECT task_id FROM hit))))
)
SELECT (SELECT count(*) FROM hit), (SELECT count(*) FROM told) + (SELECT count(*) FROM fed)
"""

# A task not started past its ``date_expires`` (as ``STARTED`` reads it).
_LAPSED = """h.date_finished IS NULL AND h.state IN ('queued', 'delayed')
       AND coalesce(h.date_expires <= now(), false)"""

# The generic calls (``StateStore``), for tasks kept in another transport. A holder of
# the unique key that has lapsed (it reads ``expired`` and will never start) is made
# final first (``lapsed``, which the insert reads, so that it runs first), freeing the
# key; the holder named in the answer is never a lapsed one (this statement's snapshot
# may still show it holding the key).
SUBMITTED = f"""
WITH lapsed AS (
    UPDATE {{s}}.asynctask_status AS h
    SET state = 'expired', date_finished = h.date_expires, unique_key = NULL,
        date_forget = now() + make_interval(secs => %(ttl)s::float8)
    WHERE %(unique_key)s::text IS NOT NULL AND h.queue_name = %(queue)s
      AND h.unique_key = %(unique_key)s::text AND {_LAPSED}
    RETURNING {_TOLD.replace("s.", "h.")}
), st AS (
    INSERT INTO {{s}}.asynctask_status (task_id, queue_name, state, date_expires, unique_key)
    SELECT t.id, %(queue)s, CASE WHEN %(delay)s::float8 > 0 THEN 'delayed' ELSE 'queued' END,
           now() + make_interval(secs => %(expires)s::float8), %(unique_key)s::text
    FROM unnest(%(ids)s::uuid[]) AS t(id), (SELECT count(*) FROM lapsed) AS f
    ON CONFLICT DO NOTHING
    RETURNING task_id
)
SELECT (SELECT count(*) FROM st),
    (SELECT replace(h.task_id::text, '-', '') FROM {{s}}.asynctask_status AS h
     WHERE %(unique_key)s::text IS NOT NULL AND h.queue_name = %(queue)s
       AND h.unique_key = %(unique_key)s::text AND NOT ({_LAPSED})),
    EXISTS (SELECT 1 FROM {{s}}.asynctask_status WHERE task_id = (%(ids)s::uuid[])[1])
"""

STARTED = f"""
WITH cur AS (
    SELECT task_id, state, date_finished IS NULL AS open,
        date_finished IS NULL AND state IN ('queued', 'delayed')
            AND coalesce(date_expires <= now(), false) AS lapsed
    FROM {{s}}.asynctask_status WHERE task_id = %(id)s::uuid
    FOR UPDATE
), run AS (
    UPDATE {{s}}.asynctask_status AS s
    SET state = 'running', attempts = %(attempt)s, date_started = now()
    FROM cur WHERE s.task_id = cur.task_id AND cur.open AND NOT cur.lapsed
), lapse AS (
    UPDATE {{s}}.asynctask_status AS s
    SET state = 'expired', {_FINAL}
    FROM cur WHERE s.task_id = cur.task_id AND cur.lapsed
    RETURNING {_TOLD}
)
SELECT state, open, lapsed, (SELECT count(*) FROM lapse) FROM cur
"""

# Requeued from the failed store (``queued``) is the one way out of a final state;
# ``cancelled`` is never overwritten. ``failed`` gets no ``date_forget``: it lives as long
# as its failed record (the purge of that record deletes it, ``PURGED``).
SETTLED = f"""
UPDATE {{s}}.asynctask_status AS s
SET state = %(state)s, attempts = %(attempts)s, error = coalesce(%(error)s, s.error),
    result = CASE WHEN %(state)s = 'succeeded' THEN %(result)s END,
    date_finished = CASE WHEN %(final)s THEN now() END,
    date_forget = CASE WHEN %(final)s AND %(state)s <> 'failed'
                       THEN now() + make_interval(secs => %(ttl)s::float8) END,
    unique_key = CASE WHEN %(final)s THEN NULL ELSE s.unique_key END
WHERE s.task_id = %(id)s::uuid
  AND (s.date_finished IS NULL OR (s.state = 'failed' AND %(state)s = 'queued'))
RETURNING CASE WHEN %(final)s THEN {_TOLD} END
"""

# The failed window (``StateStore.failing``): the running task's worker is about to move
# it into its transport's failed store at ``%(where)s``, noted with the error (a later
# write leaves the column: only a ``running`` row with it is looked up). The row says
# whether the task was cancelled (then nothing is noted); no row: no status kept.
FAILING = """
WITH cur AS (
    SELECT task_id, state FROM {s}.asynctask_status WHERE task_id = %(id)s::uuid FOR UPDATE
), noted AS (
    UPDATE {s}.asynctask_status AS s SET failing = %(where)s, error = %(error)s
    FROM cur WHERE s.task_id = cur.task_id AND cur.state = 'running'
)
SELECT state = 'cancelled' FROM cur
"""

# ``failed`` for a task still ``running`` with the note ``%(where)s`` (as ``SETTLED``
# writes it, NOTIFY to its waiters); else nothing: a write since the note stands.
CONFIRM_FAILED = f"""
UPDATE {{s}}.asynctask_status AS s
SET state = 'failed', date_finished = now(), date_forget = NULL, unique_key = NULL
WHERE s.task_id = %(id)s::uuid AND s.state = 'running' AND s.failing = %(where)s
RETURNING {_TOLD}
"""

# A status feed's writes (``asynctask_pgsql.statefeed``), one row a task: its last state
# in the batch, and the age in seconds of its start when one is among them (else NULL).
# A row is written as ``SETTLED`` writes it (``running`` is not final); a final row is
# never overwritten (a start after a cancel is late: its id is returned; a cancelled row
# still gets the attempt that started, as a start written before the cancel gave it).
# Nor does a start undo the ``retrying`` of its own attempt or a later one: with an AMQP
# relay making a worker's held starts (``asynctask_amqp.relayedfeed``) while the worker
# writes a retry itself, the start may arrive second; the next attempt's start is
# written.
# Each part names its rows by an array of ids (``= ANY``): the planner that takes the
# status table for empty would otherwise walk its whole primary key for the join. The
# rows come as ONE JSON text (an array of objects, ``json.dumps`` in the feed), not six
# arrays: the feed sends it prepared, parameters as text, without psycopg's adaptation
# (six array dumpers a call were most of a tracked task's 798k instructions in the
# worker, callgrind: ``asynctask_pgsql.statefeed``).
FEED_WRITES = f"""
WITH w AS (
    SELECT * FROM json_to_recordset(%(rows)s::json)
        AS w(id uuid, state text, attempts int, ago float8, error text, result text)
), up AS (
    UPDATE {{s}}.asynctask_status AS s
    SET state = w.state, attempts = w.attempts, error = coalesce(w.error, s.error),
        date_started = CASE WHEN w.ago IS NULL THEN s.date_started
                            ELSE now() - make_interval(secs => w.ago) END,
        result = CASE WHEN w.state = 'succeeded' THEN w.result END,
        date_finished = CASE WHEN w.state IN {_FINAL_STATES} THEN now() END,
        date_forget = CASE WHEN w.state IN {_FINAL_STATES} AND w.state <> 'failed'
                           THEN now() + make_interval(secs => %(ttl)s::float8) END,
        unique_key = CASE WHEN w.state IN {_FINAL_STATES} THEN NULL ELSE s.unique_key END
    FROM w
    WHERE s.task_id = w.id AND s.task_id = ANY(ARRAY(SELECT id FROM w))
      AND (s.date_finished IS NULL OR (s.state = 'failed' AND w.state = 'queued'))
      AND NOT (w.state = 'running' AND s.state = 'retrying' AND s.attempts >= w.attempts)
    RETURNING CASE WHEN w.state IN {_FINAL_STATES} THEN {_TOLD} END
), late AS (
    UPDATE {{s}}.asynctask_status AS s
    SET attempts = greatest(s.attempts, w.attempts),
        date_started = coalesce(s.date_started, now() - make_interval(secs => w.ago))
    FROM w
    WHERE s.task_id = w.id AND s.task_id = ANY(ARRAY(SELECT id FROM w))
      AND w.ago IS NOT NULL AND s.state = 'cancelled'
)
SELECT (SELECT count(*) FROM up), ARRAY(
    SELECT replace(s.task_id::text, '-', '') FROM w JOIN {{s}}.asynctask_status AS s
    ON s.task_id = w.id AND s.task_id = ANY(ARRAY(SELECT id FROM w))
    WHERE w.ago IS NOT NULL AND s.state IN ('cancelled', 'expired'))
"""

# What a status feed opening loads: the queue's cancelled tasks not forgotten yet, at
# most ``%(most)s`` (a cancel made before it listened: it never notified the feed).
FEED_CANCELLED = """
SELECT replace(task_id::text, '-', '') FROM {s}.asynctask_status
WHERE queue_name = %(queue)s AND state = 'cancelled' AND date_forget > now()
LIMIT %(most)s
"""

# Purged by another transport keeping its statuses here: the rows go (their unique keys
# with them); a waiter is told, reads nothing and returns.
PURGED = f"""
DELETE FROM {{s}}.asynctask_status AS s WHERE s.task_id = ANY(%(ids)s::uuid[])
RETURNING {_TOLD}
"""

# ``wait`` marks the task watched (then reads it): its final state is announced.
WATCH = "UPDATE {s}.asynctask_status SET watched = true WHERE task_id = %s AND NOT watched"

# Up to ``%s`` final statuses past their ``date_forget``, oldest first (index
# asynctask_status_forget), rows another process is deleting skipped
# (``asynctask_pgsql.forget`` says who sends it, and when). The rows are deleted by the
# ``ctid`` of the versions locked (a TID scan: none can change before we commit): joined
# by ``task_id``, the pool's sessions (hash joins allowed) planned a sequential scan of
# the whole table, 8.5 ms a delete of 1,000 among 30,000 rows (EXPLAIN ANALYZE, private
# server), a cost that grew with the history.
FORGET = """
WITH gone AS (
    DELETE FROM {s}.asynctask_status
    WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM {s}.asynctask_status WHERE date_forget < now()
        ORDER BY date_forget LIMIT %s
        FOR UPDATE SKIP LOCKED))
    RETURNING 1
)
SELECT count(*) FROM gone
"""

TRACK = "DELETE FROM {s}.asynctask_untracked WHERE queue_name = %s"

UNTRACK = "INSERT INTO {s}.asynctask_untracked VALUES (%s) ON CONFLICT DO NOTHING"


UNTRACKED = "SELECT queue_name FROM {s}.asynctask_untracked WHERE queue_name = ANY(%s)"


@dataclass(frozen=True)
class StateStatements:
    """The statements above with the schema name filled in."""

    statuses: LiteralString
    cancel: LiteralString
    submitted: LiteralString
    started: LiteralString
    settled: LiteralString
    failing: LiteralString
    confirm_failed: LiteralString
    purged: LiteralString
    feed_writes: LiteralString
    feed_cancelled: LiteralString
    watch: LiteralString
    forget: LiteralString
    track: LiteralString
    untrack: LiteralString
    untracked: LiteralString

    @classmethod
    def for_schema(cls, schema: str) -> StateStatements:
        """Fill every statement in for ``schema``."""
        texts = {name: globals()[name.upper()] for name in cls.__dataclass_fields__}
        return cls(**{name: sql(text, schema) for name, text in texts.items()})
