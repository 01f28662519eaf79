"""Every statement the pgsql transport sends, each one round trip, for one schema.

Rows are ``state = 'queued'`` (ready once ``date_available`` has passed), ``'reserved'``
(``owner`` is the consumer holding it) or ``'failed'`` (the failed store). A row is taken
in ``(priority DESC, date_available, id)`` order: first the urgent ones (``priority > 0``,
partial index ``asynctask_queue_urgent``, empty and free when nobody uses priorities),
then the others through the partial index ``asynctask_queue_ready``, so taking one costs
the same at 10 or 1,000,000 waiting rows.

Task statuses (``asynctask.status``) live in ``asynctask_status``, one row per task,
written by the same statements as the queue rows (``%(track)s`` false: a consumer of a
worker with ``track_status = False``, or a transport whose ``asynctask_state`` names
another store). A final status gets ``date_forget`` (now + ``%(ttl)s``; none for
``failed``, which lives as long as its failed record), ``unique_key`` NULL (the key is
free again) and a NOTIFY on the status channel ``{c}`` with the task id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import LiteralString

from asynctask_pgsql.schema import sql

# A consumer's acknowledgements ride along with its next statement ("done"). A row has an
# owner exactly while it is reserved; leaving ``state`` out keeps the plan on the primary key.
# With tracking, each becomes ``succeeded`` with its result (``%(results)s``, beside
# ``%(acks)s``), never over a final state (a task cancelled while it ran stays cancelled);
# without, a status row written at submit (the queue was tracked then, or the submit's
# unique key or expiry lives there) has its key freed and is forgotten ``%(ttl)s`` later,
# its state kept (``status`` still says the queue keeps none; left as it was it stayed
# ``queued`` for ever, issue 16): found by the probe by task id the key needed already,
# so an unrecorded task, with no row, costs no write. (``untracked_failed`` in SETTLE too.)
# ``%(started)s``: when each started (Unix microseconds), for a prefetched task that
# ended before its consumer wrote ``running`` (see ``START_RUNNING``), else NULL.
# The consumer writes these parameters itself (``consumer._bound``): the arrays as
# literals of integers, the results as one JSON array, as ``START_RUNNING`` takes them.
# A deleted row finds its result and start by its place in ``%(acks)s``
# (``array_position``): joining the arrays' rows to the deleted ones rescanned them once
# per row (nested loops, the only join a consumer's session plans), 0.15 of a RESERVE's
# 0.9 ms of 16 (auto_explain, private server).
# RESERVE's joins of a table to a CTE (and PUT_UNIQUE's) also name the table's rows by
# an array of the CTE's keys (``= ANY(ARRAY(SELECT ...))``, an InitPlan run once, then
# an index or TID scan): a schema with autovacuum off is never ANALYZEd, and a VACUUM of
# a drained table that kept its pages leaves ``reltuples = 0``: the planner, taking the
# table for empty, ran the join as a nested loop over every row of its primary key, the
# CTE rescanned per row (make bench's depth step: 261/s at 100,000 waiting against
# 20,000/s; tests/pgsql/test_plans.py counts the loops).
_DONE_ROWS = """done AS (
    DELETE FROM {s}.asynctask_queue
    WHERE id = ANY(%(acks)s::bigint[]) AND owner = ANY(%(owners)s::int[])
    RETURNING id, task_id, attempts, array_position(%(acks)s::bigint[], id) AS n
)"""
_SUCCEEDED = """, succeeded AS (
    UPDATE {s}.asynctask_status AS s
    SET state = 'succeeded', result = %(results)s::jsonb ->> (done.n - 1),
        date_finished = now(),
        date_forget = now() + make_interval(secs => %(ttl)s::float8), unique_key = NULL,
        date_started = coalesce(
            s.date_started, to_timestamp((%(started)s::float8[])[done.n] / 1e6)),
        attempts = greatest(s.attempts, greatest(done.attempts, 0) + 1)
    FROM done
    WHERE %(track)s AND s.task_id = done.task_id AND s.date_finished IS NULL
      AND s.task_id = ANY(ARRAY(SELECT task_id FROM done))
    RETURNING CASE WHEN s.watched THEN pg_notify('{c}', replace(s.task_id::text, '-', '')) END
)"""
_FREED = """, freed AS (
    UPDATE {s}.asynctask_status AS s
    SET unique_key = NULL,
        date_forget = coalesce(s.date_forget, now() + make_interval(secs => %(ttl)s::float8))
    FROM done
    WHERE NOT %(track)s AND s.task_id = done.task_id
      AND s.task_id = ANY(ARRAY(SELECT task_id FROM done))
      AND (s.unique_key IS NOT NULL OR s.date_forget IS NULL)
)"""
_DONE = _DONE_ROWS + _SUCCEEDED + _FREED
# RESERVE, sent every ``prefetch`` tasks, carries only the CTE its consumer's tracking
# can reach (``%(track)s`` still decides): an UPDATE nothing reaches is still started
# by the server (its table and indexes opened and locked), 65 against 50 us of server
# CPU a RESERVE that took nothing (private server, /proc of its backend, 8,000 each).
_DONE_TRACKED = _DONE_ROWS + _SUCCEEDED
_DONE_UNTRACKED = _DONE_ROWS + _FREED

_LAPSED = "coalesce(date_expires <= now(), false)"

# A final status (the columns after SET), for ``%(ttl)s`` seconds.
_FINAL = """date_finished = now(), date_forget = now() + make_interval(secs => %(ttl)s::float8),
        unique_key = NULL"""

# Only a task somebody waits for (``watched``, set by ``wait``) is announced: a NOTIFY
# wakes every listening session of the database, so one per finished task would cost
# every worker on the server.
_TOLD = "CASE WHEN s.watched THEN pg_notify('{c}', replace(s.task_id::text, '-', '')) END"

# The head of a queue, up to ``%(limit)s`` rows, urgent ones first (see the docstring).
_HEAD = """urgent AS (
    SELECT id, ctid AS tid, priority, date_available, {bad} AS bad, {lapsed} AS lapsed
    FROM {{s}}.asynctask_queue
    WHERE queue_name = %(queue)s AND state = 'queued' AND priority > 0
      AND date_available <= now()
    ORDER BY priority DESC, date_available, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), plain AS (
    SELECT id, ctid AS tid, priority, date_available, {bad} AS bad, {lapsed} AS lapsed
    FROM {{s}}.asynctask_queue
    WHERE queue_name = %(queue)s AND state = 'queued' AND date_available <= now()
      AND date_available >= {floor} AND priority <= 0
    ORDER BY date_available, id
    LIMIT greatest(%(limit)s - (SELECT count(*) FROM urgent), 0)
    FOR UPDATE SKIP LOCKED
), head AS (
    SELECT * FROM urgent UNION ALL SELECT * FROM plain
), lapsed AS (
    DELETE FROM {{s}}.asynctask_queue AS t
    WHERE t.ctid = ANY(ARRAY(SELECT tid FROM head WHERE lapsed AND NOT bad))
    RETURNING t.task_id
), expired AS (
    UPDATE {{s}}.asynctask_status AS s
    SET state = 'expired', {final}
    FROM lapsed WHERE s.task_id = lapsed.task_id AND s.date_finished IS NULL
      AND s.task_id = ANY(ARRAY(SELECT task_id FROM lapsed))
    RETURNING {told}
)"""

_NOTIFY = """SELECT pg_notify({s}.asynctask_channel(queue_name), '')
FROM (SELECT DISTINCT queue_name FROM moved) AS m"""

_BAD = "(payload_text IS NULL AND jsonb_typeof(payload) <> 'object')"

# A consumer's floor (``%(floor)s``, Unix microseconds, NULL for none): every waiting row
# of its queue that is not urgent and sorts before it is known to be taken, so the head
# is read from there, past the dead index entries of the tasks taken before (a queue
# table not vacuumed since 1,000,000 tasks passed: 7,300 pages of ``asynctask_queue_ready``
# a RESERVE, see ``consumer.PgsqlConsumer._floor``).
_FLOOR = (
    "coalesce(timestamptz 'epoch' + make_interval(secs => %(floor)s::float8 / 1e6), '-infinity')"
)

# A row's ``date_available`` as Unix microseconds (the text of a submit's NOTIFY
# ``at <microseconds>``, and a reserved row's ``at``), for the consumers' floor.
_AT = "(extract(epoch FROM date_available) * 1000000)::int8"

_UNDECODABLE = (
    "'undecodable message: expected a JSON object, got a JSON ' || jsonb_typeof(t.payload)"
)

# Our own connections set asynctask.notify = off, which silences the insert trigger: one
# pg_notify per statement is cheaper than the trigger's transition table.
_NOTIFY_PUT = """
SELECT pg_notify({s}.asynctask_channel(%(queue)s), 'at ' || one.at)
FROM (SELECT min(at) AS at FROM put) AS one WHERE one.at IS NOT NULL
"""

# A submit's ``delay`` and ``expires`` count from the statement (``clock_timestamp()``,
# read once in ``submitted`` so that the status row and the queue row agree), not from the
# start of its transaction (``now()``): in the caller's transaction (``connection=``) that
# may be long before, and a task would then be due, or expired, early.
_SUBMITTED = "submitted AS (SELECT clock_timestamp() AS at)"

# The status row of new tasks, one per id of ``{ids}`` (a ``FROM`` item ``t`` with a
# column ``id``). On a queue whose workers keep no status (a row in asynctask_untracked) it is
# forgotten after the TTL like a final one: until then ``status`` names the setting
# (StatusNotTracked), and the history does not grow.
_STATUS_PUT = """INSERT INTO {s}.asynctask_status
    (task_id, queue_name, state, date_expires, unique_key, date_forget)
SELECT t.id, %(queue)s, CASE WHEN %(delay)s::float8 > 0 THEN 'delayed' ELSE 'queued' END,
       (SELECT at FROM submitted) + make_interval(secs => %(expires)s::float8),
       %(unique_key)s::text,
       (SELECT now() + make_interval(secs => %(ttl)s::float8)
        FROM {s}.asynctask_untracked WHERE queue_name = %(queue)s)
FROM {ids}
WHERE %(track)s
ON CONFLICT DO NOTHING
RETURNING task_id"""

# The queue row of one task (``%(id)s``, 32 hex digits); ``{when}``: a condition on it.
_ROW_PUT = (
    """INSERT INTO {s}.asynctask_queue
    (task_id, queue_name, payload, payload_text, date_available, headers, priority,
     date_expires)
SELECT %(id)s::uuid, %(queue)s, coalesce(%(payload)s::jsonb, '{}'), %(text)s,
       at + make_interval(secs => %(delay)s::float8), %(headers)s::jsonb, %(priority)s,
       at + make_interval(secs => %(expires)s::float8)
FROM submitted{when}
ON CONFLICT (task_id) DO NOTHING
RETURNING """
    + _AT
    + " AS at"
)

# One task without a unique key, the common submit: one statement, one round trip, its
# answer read by nobody. Its status row has no key, so nothing can stop it but a retry
# of the same submit (a lost reply), which finds both rows there and writes neither.
PUT_ONE = (
    "WITH "
    + _SUBMITTED
    + ", st AS (\n"
    + _STATUS_PUT.replace("{ids}", "(SELECT %(id)s::uuid AS id) AS t").replace(
        "%(unique_key)s::text", "NULL"
    )
    + "\n), put AS (\n"
    + _ROW_PUT.replace("{when}", "")
    + "\n)\nSELECT count(pg_notify({s}.asynctask_channel(%(queue)s), 'at ' || at)) FROM put\n"
)

# A holder of the key that is waiting past its ``date_expires`` is final (it reads
# ``expired`` and would never run): ``lapsed`` makes it so before the key is taken
# (``expired``, key freed, its queue row deleted, its waiter told), as a reserve would.
# Its queue row is locked first, in the order a reserve locks (queue row, then status),
# and skipped when a reserve holds it (that reserve expires it and frees the key; the
# insert below waits for its commit). A row a consumer already reserved keeps its key
# until that consumer's start drops it (a sweep could still hand it back to run).
_LAPSED_HOLDER = f"""lapsed AS (
    SELECT q.id, q.task_id, q.date_expires FROM {{s}}.asynctask_queue AS q
    JOIN {{s}}.asynctask_status AS h ON h.task_id = q.task_id
    WHERE h.queue_name = %(queue)s AND h.unique_key = %(unique_key)s::text
      AND h.date_finished IS NULL AND q.state = 'queued'
      AND q.date_expires <= (SELECT at FROM submitted)
    FOR UPDATE OF q SKIP LOCKED
), freed AS (
    UPDATE {{s}}.asynctask_status AS s
    SET state = 'expired', date_finished = lapsed.date_expires, unique_key = NULL,
        date_forget = now() + make_interval(secs => %(ttl)s::float8)
    FROM lapsed WHERE s.task_id = lapsed.task_id AND s.date_finished IS NULL
      AND s.task_id = ANY(ARRAY(SELECT task_id FROM lapsed))
    RETURNING s.task_id, {_TOLD}
), dropped AS (
    DELETE FROM {{s}}.asynctask_queue AS q WHERE q.id = ANY(ARRAY(SELECT id FROM lapsed))
)"""

# PUT_ONE without the status row, for a submit that writes none (``%(track)s`` false: an
# untracked queue, or statuses kept in another store). The same rows as PUT_ONE's with
# ``track`` false, but the server does not start the status INSERT nothing reaches:
# pg_stat_statements on a private server, alternating blocks of 500 on one table, 39-41
# us of execution against 48-51 us (00bd0fa's one-task INSERT, without the status row
# and ON CONFLICT, 32-34 us).
PUT_ONE_UNTRACKED = (
    "WITH "
    + _SUBMITTED
    + ", put AS (\n"
    + _ROW_PUT.replace("{when}", "")
    + "\n)\nSELECT count(pg_notify({s}.asynctask_channel(%(queue)s), 'at ' || at)) FROM put\n"
)

# One task with a unique key: the task row is written only if its status row was: the
# partial unique index asynctask_status_unique (queue_name, unique_key) takes the key
# atomically (ON CONFLICT waits for a concurrent holder's commit), once a lapsed holder
# has let it go (``_LAPSED_HOLDER``, run first: the status insert reads its count). The
# answer: whether ours was written, the holder's id (never a lapsed one, which this
# statement's snapshot may still show holding it), and whether this id is known (a
# retried submit). A holder that committed after this statement's snapshot reads as
# none: the caller runs the statement again.
PUT_UNIQUE = (
    "WITH "
    + _SUBMITTED
    + ", "
    + _LAPSED_HOLDER
    + ", st AS (\n"
    + _STATUS_PUT.replace(
        "{ids}", "(SELECT %(id)s::uuid AS id FROM (SELECT count(*) FROM freed) AS f) AS t"
    )
    + "\n), put AS (\n"
    + _ROW_PUT.replace("{when}", " WHERE EXISTS (SELECT 1 FROM st)")
    + """
)
SELECT (SELECT count(*) FROM st),
    (SELECT replace(h.task_id::text, '-', '') FROM {s}.asynctask_status AS h
     WHERE h.queue_name = %(queue)s AND h.unique_key = %(unique_key)s::text
       AND NOT EXISTS (
           SELECT 1 FROM {s}.asynctask_queue AS q
           WHERE q.task_id = h.task_id AND q.state = 'queued'
             AND q.date_expires <= (SELECT at FROM submitted))),
    EXISTS (SELECT 1 FROM {s}.asynctask_status WHERE task_id = %(id)s::uuid),
    (SELECT count(pg_notify({s}.asynctask_channel(%(queue)s), 'at ' || at)) FROM put)
"""
)

# A task id is unique in the table (index asynctask_queue_task_id): a submit retried after
# a lost reply writes nothing the second time (ON CONFLICT DO NOTHING).
# unnest yields its rows in order, and the insert numbers them (``id``) in that order.
# The arrays travel in binary (%b): text arrays would be escaped element by element in
# Python, which cost more than the server's work (batch submit 1.5x faster).
PUT = (
    "WITH "
    + _SUBMITTED
    + """, st AS (
"""
    + _STATUS_PUT.replace("{ids}", "unnest(%(ids)b::uuid[]) AS t(id)")
    + """
), put AS (
INSERT INTO {s}.asynctask_queue
    (task_id, queue_name, payload, payload_text, date_available, headers, priority,
     date_expires)
SELECT t.id, %(queue)s, coalesce(t.payload::jsonb, '{}'), t.text,
       (SELECT at FROM submitted) + make_interval(secs => %(delay)s), t.headers::jsonb,
       %(priority)s, (SELECT at FROM submitted) + make_interval(secs => %(expires)s::float8)
FROM unnest(%(ids)b::uuid[], %(payloads)b::text[], %(texts)b::text[], %(headers)b::text[])
    AS t(id, payload, text, headers)
ON CONFLICT (task_id) DO NOTHING
RETURNING """
    + _AT
    + """ AS at
)"""
    + _NOTIFY_PUT
)

_HEAD_ROWS = _HEAD.format(bad=_BAD, lapsed=_LAPSED, final=_FINAL, told=_TOLD, floor=_FLOOR)

# Takes the head. Rows past their ``date_expires`` are deleted as ``expired`` and come
# back as ``bad`` rows (the consumer looks again). A reserved task is not ``running``
# yet: ``START`` marks it when the worker starts it. The taken rows are found by the
# ``ctid`` of the version the head locked (a TID scan; no other session can change it
# before we commit): by ``id`` each took a descent of the primary key, 48 of a RESERVE
# of 16's buffers against 16 (auto_explain, private server). The ``id`` is still
# checked, written so that the planner keeps the TID scan (``IS TRUE`` is no index
# condition). The task id comes as the text the consumer hands out (32 hex digits): a
# ``uuid`` column became a ``uuid.UUID`` built in Python and written back as ``.hex``,
# per task.
_RESERVE = """
WITH {done}, {head}, taken AS (
    UPDATE {{s}}.asynctask_queue AS t
    SET state = CASE WHEN head.bad THEN 'failed' ELSE 'reserved' END,
        owner = CASE WHEN head.bad THEN NULL ELSE %(owner)s::int END,
        keeper = CASE WHEN head.bad THEN NULL ELSE %(keeper)s::int END,
        error = CASE WHEN head.bad THEN {undecodable} ELSE t.error END,
        date_failed = CASE WHEN head.bad THEN now() END
    FROM head WHERE t.ctid = head.tid AND (t.id = head.id) IS TRUE
        AND (head.bad OR NOT head.lapsed)
    RETURNING head.bad, t.id, replace(t.task_id::text, '-', '') AS task_id,
        CASE WHEN head.bad THEN NULL ELSE t.payload END AS p,
        t.payload_text, t.attempts, extract(epoch FROM t.date_submitted)::float8 AS submitted,
        t.date_available, t.headers, t.priority,
        extract(epoch FROM t.date_expires)::float8 AS expires,
        CASE WHEN t.priority <= 0 THEN {at} END AS at
)
SELECT bad, id, task_id, p, payload_text, attempts, submitted, headers, expires, at FROM (
    SELECT bad, id, task_id, p, payload_text, attempts, submitted, headers, expires,
        priority, date_available, at
    FROM taken
    UNION ALL
    SELECT true, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM lapsed
) AS rows
ORDER BY priority DESC NULLS LAST, date_available, id
"""
RESERVE_TRACKED = _RESERVE.format(
    done=_DONE_TRACKED, head=_HEAD_ROWS, undecodable=_UNDECODABLE, at=_AT.replace("date", "t.date")
)
RESERVE_UNTRACKED = _RESERVE.format(
    done=_DONE_UNTRACKED,
    head=_HEAD_ROWS,
    undecodable=_UNDECODABLE,
    at=_AT.replace("date", "t.date"),
)

# A prefetched task is about to run: ``running``, unless its status is ``cancelled`` or
# its ``date_expires`` has passed (then its row is deleted here, and it never runs).
# Sends the pending acknowledgements too. Committed asynchronously (synchronous_commit
# off for this transaction only): a server crash may lose the last fraction of a second
# of these, which then read as the task not started yet, and a lost acknowledgement
# makes its task run again, as after a killed worker (at least once). One fsync per
# started task would cost most of a prefetching drain.
START = f"""
WITH quick AS (
    SELECT set_config('synchronous_commit', 'off', true) AS done
), {_DONE}, row AS (
    SELECT id, task_id, attempts, {_LAPSED} AS lapsed FROM {{s}}.asynctask_queue
    WHERE id = %(id)s AND owner = ANY(%(owners)s::int[])
), was AS (
    SELECT s.state FROM {{s}}.asynctask_status AS s
    WHERE s.task_id = ANY(ARRAY(SELECT task_id FROM row))
), started AS (
    UPDATE {{s}}.asynctask_status AS s
    SET state = 'running', attempts = greatest(row.attempts, 0) + 1, date_started = now()
    FROM row WHERE s.task_id = row.task_id AND NOT row.lapsed AND s.date_finished IS NULL
      AND s.task_id = ANY(ARRAY(SELECT task_id FROM row))
), expired AS (
    UPDATE {{s}}.asynctask_status AS s
    SET state = 'expired', {_FINAL}
    FROM row WHERE s.task_id = row.task_id AND row.lapsed AND s.date_finished IS NULL
      AND s.task_id = ANY(ARRAY(SELECT task_id FROM row))
    RETURNING {_TOLD}
), gone AS (
    DELETE FROM {{s}}.asynctask_queue AS t
    WHERE t.id = ANY(ARRAY(SELECT id FROM row))
      AND ((SELECT lapsed FROM row) OR (SELECT state FROM was) = 'cancelled')
)
SELECT (SELECT count(done) FROM quick), row.lapsed, (SELECT state FROM was) FROM row
"""

# A consumer with ``prefetch`` above 1 starts a task it took ahead without waiting:
# ``running`` is written by this, sent in libpq's pipeline mode (answers read before
# the consumer's next statement) once the task has run ``SYNC_WITHIN`` (50 ms): a task
# that ends sooner is written ``succeeded`` (or ``retrying``/``failed``) directly, with
# its start time, by its acknowledgement. So a drain of short prefetched tasks costs no
# statement per start, and a longer task reads ``running`` within 50 ms of its start.
# Only when the consumer knows the task may run: not expired (``date_expires`` came
# with the reserve) and no cancel announced on the queue's channel (``cancel <id>``,
# see ``state_sql.CANCEL``); else it sends ``START`` and waits.
# A cancel that lands in between is not overwritten (``date_finished IS NULL``): the task
# then runs as one cancelled while it runs (its supervisor stops it). The rest as
# ``START``: ``running``, the pending acknowledgements, async commit. Parameters: task
# ids, their attempts, owners, acknowledged row ids, their results as a JSON array, ttl,
# their start times (Unix microseconds), the tasks' start times (Unix seconds).
# Every task due is written by one statement: prefetched tasks started together come due
# together (one child of 100 slots of 50 ms sleeps: about 90 a wave), and a statement a
# task cost each its own execution (about 230 us against 33 us a row, private server)
# while the next start's bare Sync (``consumer._hear_cancels``) waited for all of them.
# The statuses are named by an array (``= ANY(ARRAY(SELECT ...))``, an InitPlan, then an
# index scan whatever the planner believes of the table: with ``= ANY($1)`` it walked
# the whole primary key of a table it took for empty, tests/pgsql/test_plans.py), then
# joined to their attempts and starts; so are the acknowledged ones (``succeeded``,
# as ``_SUCCEEDED``: joined to ``done`` alone it walked the primary key whole too,
# 200,024 rows beside 100,000 finished statuses, found when this statement joined the
# plan test).
START_RUNNING = f"""
PREPARE asynctask_start (uuid[], int[], int[], bigint[], jsonb, float8, float8[], float8[]) AS
WITH quick AS (
    SELECT set_config('synchronous_commit', 'off', true) AS done
), done AS (
    DELETE FROM {{s}}.asynctask_queue WHERE id = ANY($4) AND owner = ANY($3)
    RETURNING id, task_id, attempts, array_position($4, id) AS n
), succeeded AS (
    UPDATE {{s}}.asynctask_status AS s
    SET state = 'succeeded', result = $5 ->> (done.n - 1), date_finished = now(),
        date_forget = now() + make_interval(secs => $6), unique_key = NULL,
        date_started = coalesce(s.date_started, to_timestamp($7[done.n] / 1e6)),
        attempts = greatest(s.attempts, greatest(done.attempts, 0) + 1)
    FROM done
    WHERE s.task_id = done.task_id AND s.date_finished IS NULL
      AND s.task_id = ANY(ARRAY(SELECT task_id FROM done))
    RETURNING {_TOLD}
)
UPDATE {{s}}.asynctask_status AS s
SET state = 'running', attempts = m.attempt, date_started = to_timestamp(m.started)
FROM unnest($1, $2, $8) AS m(task_id, attempt, started)
WHERE s.task_id = m.task_id AND s.task_id = ANY(ARRAY(SELECT unnest($1)))
  AND s.date_finished IS NULL
  AND EXISTS (SELECT 1 FROM quick WHERE done IS NOT NULL)
"""

# Seconds until the first waiting row is due (<= 0: one is due, locked by another
# consumer) and its ``date_available`` (Unix microseconds): the consumer's floor after it.
NEXT_DUE = f"""
SELECT extract(epoch FROM min(date_available) - now())::float8,
       (extract(epoch FROM min(date_available)) * 1000000)::int8
FROM {{s}}.asynctask_queue
WHERE queue_name = %(queue)s AND state = 'queued' AND date_available >= {_FLOOR}
"""

# Retry (``queued`` with ``%(attempt)s`` 1), fail, or hand back (``queued``, attempt 0).
# Statuses: ``retrying`` with the error, ``failed`` (final, kept with its failed record),
# or back to ``queued`` for a started task handed back. A retried or failed task whose
# status is ``cancelled`` (cancelled while it ran) is deleted instead: never run again,
# not in the failed store; a row ``(NULL, true)`` says so (the run loop logs it).
# ``date_expires`` applies until a task first starts: a retry clears it.
SETTLE = f"""
WITH {_DONE}, held AS (
    SELECT id, task_id FROM {{s}}.asynctask_queue
    WHERE %(track)s AND %(attempt)s > 0 AND id = ANY(%(ids)s::bigint[])
      AND owner = ANY(%(owners)s::int[])
), cancelled AS (
    DELETE FROM {{s}}.asynctask_queue AS t
    WHERE t.id = ANY(ARRAY(SELECT id FROM held WHERE task_id = ANY(ARRAY(
        SELECT s.task_id FROM {{s}}.asynctask_status AS s
        WHERE s.task_id = ANY(ARRAY(SELECT task_id FROM held)) AND s.state = 'cancelled'))))
    RETURNING t.id
), moved AS (
    UPDATE {{s}}.asynctask_queue
    SET state = %(state)s, owner = NULL, keeper = NULL,
        attempts = greatest(attempts, 0) + %(attempt)s,
        error = coalesce(%(error)s, error),
        date_available = CASE WHEN %(delay)s::float8 IS NULL THEN date_available
                              ELSE now() + make_interval(secs => %(delay)s) END,
        date_failed = CASE WHEN %(state)s = 'failed' THEN now() END,
        date_expires = CASE WHEN %(attempt)s > 0 THEN NULL ELSE date_expires END
    WHERE id = ANY(%(ids)s::bigint[]) AND owner = ANY(%(owners)s::int[])
      AND id NOT IN (SELECT id FROM cancelled)
    RETURNING queue_name, task_id, attempts
), marked AS (
    UPDATE {{s}}.asynctask_status AS s
    SET state = CASE WHEN %(state)s = 'failed' THEN 'failed'
                     WHEN %(attempt)s > 0 THEN 'retrying' ELSE 'queued' END,
        error = coalesce(%(error)s, s.error),
        date_finished = CASE WHEN %(state)s = 'failed' THEN now() END,
        unique_key = CASE WHEN %(state)s = 'failed' THEN NULL ELSE s.unique_key END,
        date_started = coalesce(to_timestamp(%(started_at)s::float8), s.date_started),
        attempts = CASE WHEN %(attempt)s > 0 THEN greatest(s.attempts, moved.attempts)
                        ELSE s.attempts END
    FROM moved WHERE %(track)s AND s.task_id = moved.task_id AND s.date_finished IS NULL
        AND s.task_id = ANY(ARRAY(SELECT task_id FROM moved))
        AND (%(attempt)s > 0 OR %(state)s = 'failed' OR s.state = 'running')
    RETURNING CASE WHEN %(state)s = 'failed' THEN {_TOLD} END
), untracked_failed AS (
    UPDATE {{s}}.asynctask_status AS s
    SET unique_key = NULL,
        date_forget = coalesce(s.date_forget, now() + make_interval(secs => %(ttl)s::float8))
    FROM moved
    WHERE NOT %(track)s AND %(state)s = 'failed' AND s.task_id = moved.task_id
      AND s.task_id = ANY(ARRAY(SELECT task_id FROM moved))
      AND (s.unique_key IS NOT NULL OR s.date_forget IS NULL)
)
SELECT pg_notify({{s}}.asynctask_channel(queue_name), ''), false
FROM (SELECT DISTINCT queue_name FROM moved) AS m
UNION ALL SELECT NULL, true FROM cancelled
"""

# A consumer's sweep of its own queue, one sweeper at a time per queue (the others' gate
# lock fails: they skip). The sweeper also forgets up to ``%(forget_limit)s`` final
# statuses past their ``date_forget`` (index asynctask_status_forget: the oldest first,
# never a scan of the history). It reads only this queue's reserved rows (index
# asynctask_queue_reserved), never pg_locks. A dead row goes back, one attempt more:
# - a row whose liveness a supervisor keeps (``keeper``: the id of its owner's
#   asynctask_owner row, see asynctask.liveness) is dead once that row has not been
#   beaten within the lease (its consumer's session may come and go meanwhile), counted
#   from the server's start at the earliest (a restart gives every keeper a lease to
#   beat again, however long the server was down);
# - any other row is dead when its consumer (not this one) holds no advisory lock: a
#   dead owner is one whose lock this transaction can take; it is released at commit.
SWEEP = f"""
WITH gate AS (
    SELECT pg_try_advisory_xact_lock(%(sweep_class)s::int, hashtext(%(queue)s)) AS open
), owners AS (
    SELECT DISTINCT t.owner FROM {{s}}.asynctask_queue AS t, gate
    WHERE gate.open AND t.queue_name = %(queue)s AND t.state = 'reserved'
      AND t.keeper IS NULL AND t.owner <> ALL(%(owners)s::int[])
), dead AS (
    SELECT owner FROM owners WHERE pg_try_advisory_xact_lock(%(lock_class)s::int, owner)
), keepers AS (
    SELECT DISTINCT t.keeper FROM {{s}}.asynctask_queue AS t, gate
    WHERE gate.open AND t.queue_name = %(queue)s AND t.state = 'reserved'
      AND t.keeper IS NOT NULL
), dead_keepers AS (
    SELECT k.keeper FROM keepers AS k WHERE NOT EXISTS (
        SELECT 1 FROM {{s}}.asynctask_owner AS o
        WHERE o.id = k.keeper
          AND greatest(o.date_beat, pg_postmaster_start_time())
              > now() - make_interval(secs => %(lease)s))
), taken AS (
    SELECT t.id FROM {{s}}.asynctask_queue AS t
    WHERE t.queue_name = %(queue)s AND t.state = 'reserved'
      AND ((t.keeper IS NULL AND t.owner IN (SELECT owner FROM dead))
           OR t.keeper IN (SELECT keeper FROM dead_keepers))
    FOR UPDATE OF t SKIP LOCKED
), moved AS (
    UPDATE {{s}}.asynctask_queue AS t
    SET state = 'queued', owner = NULL, keeper = NULL, attempts = greatest(t.attempts, 0) + 1,
        date_expires = NULL
    WHERE t.id = ANY(ARRAY(SELECT id FROM taken))
    RETURNING t.queue_name, t.task_id
), requeued AS (
    UPDATE {{s}}.asynctask_status AS s SET state = 'queued'
    WHERE s.task_id = ANY(ARRAY(SELECT task_id FROM moved)) AND s.state = 'running'
), old AS (
    SELECT ctid AS tid FROM {{s}}.asynctask_status, gate
    WHERE gate.open AND date_forget < now()
    ORDER BY date_forget LIMIT %(forget_limit)s
    FOR UPDATE OF asynctask_status SKIP LOCKED
), forgotten AS (
    DELETE FROM {{s}}.asynctask_status AS s WHERE s.ctid = ANY(ARRAY(SELECT tid FROM old))
)
{_NOTIFY}
"""

ORPHANS = f"""
WITH moved AS (
    UPDATE {{s}}.asynctask_queue SET state = 'queued', owner = NULL, keeper = NULL
    WHERE owner = %(owner)s AND state = 'reserved' AND NOT (id = ANY(%(held)s::bigint[]))
    RETURNING queue_name
)
{_NOTIFY}
"""

# A consumer's session commits asynchronously (``synchronous_commit`` off) unless the
# URI sets ``durable_acks``: its reserves, acknowledgements, settles and sweeps no longer
# wait for the WAL flush (one fsync per reserve was half of a drain: 960 against
# 1,800 tasks/s, one worker child, prefetch 4, same run). A server crash may lose the
# last fraction of a second of them; each then reads as not done, and its task runs
# again, as after a killed worker: at least once, never lost. Submits stay synchronous.
# Its statements are planned once, generically (custom planning cost more than running
# them); a generic plan does not know the head's size (``%(limit)s``), guesses a tenth of
# the table, and joined the taken rows (and the expired statuses) by hash, reading the
# whole queue and status tables at every RESERVE: 1.86 ms and 372 buffers of server time
# per RESERVE of 4 on 5,000 rows, 0.48 ms and 143 buffers without hash and merge joins
# (``python -m bench.hot --private`` with the consumer session options
# ``-c enable_hashjoin=off -c enable_mergejoin=off`` against none, same run). Every statement of
# a consumer joins a few rows by their keys, so nested loops are always the right plan.
ENLIST = """
SELECT id, pg_try_advisory_lock(%(lock_class)s::int, id),
    set_config('tcp_keepalives_idle', %(idle)s, false),
    set_config('tcp_keepalives_interval', '1', false),
    set_config('tcp_keepalives_count', '2', false),
    set_config('tcp_user_timeout', %(user_timeout)s, false),
    set_config('plan_cache_mode', 'force_generic_plan', false),
    set_config('enable_hashjoin', 'off', false),
    set_config('enable_mergejoin', 'off', false),
    set_config('synchronous_commit', %(synchronous_commit)s, false)
FROM (SELECT coalesce(%(id)s, nextval('{s}.asynctask_consumer_id')::int) AS id) AS c
"""

# A consumer kept alive by its owner's keeper marks its rows with the id of the owner's
# row (``keeper``), created here if the keeper has not beaten yet: alive from its first
# reserve on. (It still holds its own number and advisory lock, which tell its rows apart
# from those of other consumers of the same owner.)
OWN = """
INSERT INTO {s}.asynctask_owner AS o (owner) VALUES (%s)
ON CONFLICT (owner) DO UPDATE SET date_beat = now()
RETURNING o.id
"""

BEAT = """
INSERT INTO {s}.asynctask_owner AS o (owner) VALUES (%s)
ON CONFLICT (owner) DO UPDATE SET date_beat = now()
"""

# The owner's worker is gone: the rows it had finished (an ack still waiting for its
# consumer's next statement) are deleted; the others go back (their old date_available
# keeps them at the head), one attempt more for those it had started (all when %(all)s).
END_OWNER = """
WITH gone AS (
    DELETE FROM {s}.asynctask_owner WHERE owner = %(owner_name)s RETURNING id
), acked AS (
    DELETE FROM {s}.asynctask_queue AS t
    WHERE t.keeper = ANY(ARRAY(SELECT id FROM gone)) AND t.state = 'reserved'
      AND t.task_id = ANY(%(finished)s::uuid[])
), moved AS (
    UPDATE {s}.asynctask_queue AS t
    SET state = 'queued', owner = NULL, keeper = NULL,
        attempts = greatest(t.attempts, 0)
            + CASE WHEN %(all)s OR t.task_id = ANY(%(started)s::uuid[]) THEN 1 ELSE 0 END
    WHERE t.keeper = ANY(ARRAY(SELECT id FROM gone)) AND t.state = 'reserved'
        AND NOT (t.task_id = ANY(%(finished)s::uuid[]))
    RETURNING t.queue_name, t.task_id
), requeued AS (
    UPDATE {s}.asynctask_status AS s SET state = 'queued'
    WHERE s.task_id = ANY(ARRAY(SELECT task_id FROM moved)) AND s.state = 'running'
)
SELECT (SELECT count(*) FROM moved),
       (SELECT count(pg_notify({s}.asynctask_channel(m.queue_name), ''))
        FROM (SELECT DISTINCT queue_name FROM moved) AS m)
"""

# ``get_task``: the head, deleted; the caller has it now, so its status is forgotten.
TAKE = f"""
WITH {_HEAD_ROWS}, gone AS (
    DELETE FROM {{s}}.asynctask_queue AS t
    WHERE t.ctid = ANY(ARRAY(SELECT tid FROM head WHERE NOT bad AND NOT lapsed))
    RETURNING t.task_id, t.payload, t.payload_text, t.attempts, t.date_submitted
), forgot AS (
    DELETE FROM {{s}}.asynctask_status AS s
    WHERE s.task_id = ANY(ARRAY(SELECT task_id FROM gone))
), bad AS (
    UPDATE {{s}}.asynctask_queue AS t
    SET state = 'failed', date_failed = now(),
        error = {_UNDECODABLE}
    WHERE t.ctid = ANY(ARRAY(SELECT tid FROM head WHERE bad))
    RETURNING t.id
)
SELECT false, task_id, payload, payload_text, attempts, date_submitted FROM gone
UNION ALL SELECT true, NULL, NULL, NULL, NULL, NULL FROM bad
UNION ALL SELECT true, NULL, NULL, NULL, NULL, NULL FROM lapsed
"""

# A text message deleted by TAKE that turned out not to be a task goes to the failed store.
KEEP_FAILED = """
INSERT INTO {s}.asynctask_queue
    (task_id, queue_name, payload_text, attempts, date_submitted, state, error, date_failed)
VALUES (%s, %s, %s, %s, %s, 'failed', %s, now())
"""

#: each count of a queue is exact up to this many tasks, estimated above it
EXACT_UP_TO = 10_000
#: about how many table blocks the estimate of a count above ``EXACT_UP_TO`` reads
SAMPLE_BLOCKS = 200

# The counts of queues, O(queues) whatever their depth: each count reads at most
# ``EXACT_UP_TO`` + 1 entries of its partial index (``LIMIT``), so up to that it is
# exact; a count that reaches it is replaced by an estimate (``SAMPLE``, a second
# statement sent only then), said so (``QueueStats.estimated``). Counting every row cost
# in proportion to the queue: 223.5 ms for ``queues()`` at 1,000,000 waiting against
# 0.8 ms at 100 (docs/benchmarks.md), and the web page and every Prometheus scrape call
# it. (Peers count every row: pgqueuer's ``queue_size`` and procrastinate's
# ``count_jobs_status`` are ``count(*) ... GROUP BY`` over the whole table.) A counter
# table kept by statement-level triggers (transition tables) would be exact, but every
# submit, reserve and ack would pay for it: such a trigger took 0.072 ms of a one-task
# submit's 0.229 ms of server execution (EXPLAIN ANALYZE, median of 400, shared server
# at load 15), and a drain pays it on its reserves and acks too; the rule for the hot
# path is 5% at most. ``in_flight`` is counted whole: its rows are as many as the
# consumers' prefetch allows.
_OVER = str(EXACT_UP_TO + 1)
_KINDS = {
    "ready": "state = 'queued' AND date_available <= now()",
    "delayed": "state = 'queued' AND date_available > now() AND attempts = 0",
    "retrying": "state = 'queued' AND date_available > now() AND attempts > 0",
    "failed": "state = 'failed'",
}


def _capped(kind: str) -> str:
    return (
        "(SELECT count(*) FROM (SELECT 1 FROM {s}.asynctask_queue\n"
        f"     WHERE queue_name = %(q)s AND {_KINDS[kind]} LIMIT {_OVER}) AS c)"
    )


_COUNTS = (
    "\n    "
    + ",\n    ".join(_capped(kind) for kind in ("ready", "delayed", "retrying"))
    + """,
    (SELECT count(*) FROM {s}.asynctask_queue WHERE queue_name = %(q)s AND state = 'reserved'),
    """
    + _capped("failed")
    + "\n"
)

STATS = "SELECT" + _COUNTS

# The estimate of a count above ``EXACT_UP_TO``: the queue's share of that kind among
# the rows of about ``SAMPLE_BLOCKS`` blocks of the table (``TABLESAMPLE SYSTEM``), times
# the table's live rows from the server's statistics (``pg_stat_get_live_tuples``, kept
# at every commit, autovacuum or not); without those (``track_counts`` off), the sampled
# rows over the sampled fraction. Rows: each queue seen with its sampled rows in all and
# of each kind, then the percent sampled and the live rows.
SAMPLE = (
    """
WITH share AS (
    SELECT least(100.0, 100.0 * """
    + str(SAMPLE_BLOCKS)
    + """ / greatest(1, pg_relation_size('{s}.asynctask_queue'::regclass)
        / current_setting('block_size')::int))::float8 AS percent
)
SELECT queue_name, count(*),
    """
    + ",\n    ".join(f"count(*) FILTER (WHERE {where})" for where in _KINDS.values())
    + """,
    (SELECT percent FROM share), pg_stat_get_live_tuples('{s}.asynctask_queue'::regclass)
FROM {s}.asynctask_queue TABLESAMPLE SYSTEM ((SELECT percent FROM share))
GROUP BY queue_name
"""
)


def _names_in(state: str) -> str:
    """The distinct queue names of one state, by a skip scan of that state's partial
    index (one index probe per name; DISTINCT would read every row)."""
    return f"""names_{state} AS (
    (SELECT queue_name AS q FROM {{s}}.asynctask_queue
     WHERE state = '{state}' ORDER BY queue_name LIMIT 1)
    UNION ALL
    SELECT (SELECT queue_name FROM {{s}}.asynctask_queue
            WHERE state = '{state}' AND queue_name > n.q ORDER BY queue_name LIMIT 1)
    FROM names_{state} AS n WHERE n.q IS NOT NULL
)"""


_NAMES = (
    "WITH RECURSIVE "
    + ", ".join(_names_in(state) for state in ("queued", "reserved", "failed"))
    + """, names AS (
    SELECT q FROM names_queued WHERE q IS NOT NULL
    UNION SELECT q FROM names_reserved WHERE q IS NOT NULL
    UNION SELECT q FROM names_failed WHERE q IS NOT NULL
)
"""
)

QUEUE_NAMES = _NAMES + "SELECT q FROM names"

# Every queue with its counts in one round trip.
ALL_STATS = _NAMES + "SELECT n.q," + _COUNTS.replace("%(q)s", "n.q") + "FROM names AS n"

# Purged tasks' statuses go with them; a waiter (``watched``) is told, reads nothing and
# returns. (``forgot`` is read so that its NOTIFYs are surely made, by an uncorrelated
# subquery: an InitPlan, run once. As a second FROM item the planner, expecting one row
# from ``gone``, joined it by a nested loop that read ``forgot`` again for every deleted
# row: a purge of 1,000,000 took over ten minutes. test_a_purge_reads_what_it_deleted_once)
_FORGOT = f"""forgot AS (
    DELETE FROM {{s}}.asynctask_status AS s
    WHERE s.task_id = ANY(ARRAY(SELECT task_id FROM gone))
    RETURNING {_TOLD}
)
SELECT count(*) FROM gone WHERE (SELECT count(*) FROM forgot) >= 0
"""

PURGE = (
    """
WITH gone AS (
    DELETE FROM {s}.asynctask_queue WHERE queue_name = %s AND state = 'queued'
    RETURNING task_id
), """
    + _FORGOT
)

# Whether the failed store holds a task a consumer noted it was moving there (the failed
# window, ``asynctask.status``): one probe of the unique index on task_id.
FAILED_HOLDS = """
SELECT 1 FROM {s}.asynctask_queue
WHERE task_id = %s AND queue_name = %s AND state = 'failed'
"""

FAILED = """
SELECT task_id, payload::text, payload_text, error, attempts,
       extract(epoch FROM date_submitted)::float8, extract(epoch FROM date_failed)::float8
FROM {s}.asynctask_queue WHERE queue_name = %s AND state = 'failed'
ORDER BY date_failed, id LIMIT %s OFFSET %s
"""

# ``%(all)s`` is true to act on every failed task of the queue, else only on ``ids``.
REQUEUE_FAILED = """
WITH moved AS (
    UPDATE {s}.asynctask_queue
    SET state = 'queued', attempts = 0, error = NULL, date_failed = NULL,
        date_available = now()
    WHERE queue_name = %(queue)s AND state = 'failed'
      AND (%(all)s OR task_id = ANY(%(ids)s::uuid[]))
    RETURNING queue_name, task_id
), back AS (
    UPDATE {s}.asynctask_status AS s
    SET state = 'queued', date_finished = NULL, date_forget = NULL, error = NULL
    WHERE s.task_id = ANY(ARRAY(SELECT task_id FROM moved))
)
SELECT c.n FROM (SELECT count(*) AS n FROM moved) AS c
LEFT JOIN LATERAL (
    SELECT pg_notify({s}.asynctask_channel(%(queue)s), '') WHERE c.n > 0) AS x ON true
"""

# A ``failed`` status lives as long as its failed record.
PURGE_FAILED = (
    """
WITH gone AS (
    DELETE FROM {s}.asynctask_queue WHERE queue_name = %(queue)s AND state = 'failed'
      AND (%(all)s OR task_id = ANY(%(ids)s::uuid[]))
    RETURNING task_id
), """
    + _FORGOT
)

# The same deletes for a transport whose statuses another store keeps (``asynctask_state``):
# nothing here to forget; the ids deleted, for that store to forget.
PURGE_IDS = """
DELETE FROM {s}.asynctask_queue WHERE queue_name = %s AND state = 'queued'
RETURNING task_id
"""

PURGE_FAILED_IDS = """
DELETE FROM {s}.asynctask_queue WHERE queue_name = %(queue)s AND state = 'failed'
  AND (%(all)s OR task_id = ANY(%(ids)s::uuid[]))
RETURNING task_id
"""

CLAIM = """
WITH expired AS (
    DELETE FROM {s}.asynctask_claim WHERE date_expires < now() AND key <> %(key)s
)
INSERT INTO {s}.asynctask_claim AS c (key, date_expires)
VALUES (%(key)s, now() + make_interval(secs => %(ttl)s))
ON CONFLICT (key) DO UPDATE SET date_expires = EXCLUDED.date_expires
    WHERE c.date_expires <= now()
RETURNING 1
"""

# The global limits of a queue (asynctask.limits), under the lock ``limit_lock_class``:
# first the starts out of the window and the slots of dead owners (no row beaten within
# the lease) or past their lease are deleted, then the rest is counted, then the start
# is written if allowed. Times are ``clock_timestamp()``, not ``now()`` (the transaction's
# start, before the lock was waited for: a start written with it would leave the window
# early, and more than the rate would start in one).
LIMIT_LOCK = "SELECT pg_advisory_xact_lock(%s::int, hashtext(%s))"

LIMIT_PRUNE = """
DELETE FROM {s}.asynctask_limit AS l
WHERE l.queue_name = %(queue)s AND (
    (l.kind = 'start' AND l.date_at <= clock_timestamp() - make_interval(secs => %(period)s))
    OR (l.kind = 'run' AND l.owner IS NULL AND l.date_expires <= clock_timestamp())
    OR (l.kind = 'run' AND l.owner IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM {s}.asynctask_owner AS o
        WHERE o.owner = l.owner
          AND greatest(o.date_beat, pg_postmaster_start_time())
              > clock_timestamp() - make_interval(secs => %(lease)s))))
"""

LIMIT_COUNT = """
SELECT count(*) FILTER (WHERE kind = 'run'),
       count(*) FILTER (WHERE kind = 'start'),
       extract(epoch FROM min(date_at) FILTER (WHERE kind = 'start')
               + make_interval(secs => %(period)s) - clock_timestamp())::float8,
       coalesce(bool_or(kind = 'run' AND holder = %(holder)s), false),
       coalesce(bool_or(kind = 'start' AND holder = %(holder)s), false)
FROM {s}.asynctask_limit WHERE queue_name = %(queue)s
"""

LIMIT_ADD = """
INSERT INTO {s}.asynctask_limit (queue_name, kind, holder, owner, date_at, date_expires)
VALUES (%(queue)s, %(kind)s, %(holder)s, %(owner)s, clock_timestamp(),
        clock_timestamp() + make_interval(secs => %(lease)s))
ON CONFLICT DO NOTHING
"""

LIMIT_FREE = """
DELETE FROM {s}.asynctask_limit WHERE queue_name = %s AND kind = 'run' AND holder = %s
"""

# The head of the queue in the order workers take it (the ``asynctask_queue_ready`` index).
OLDEST_READY = """
SELECT extract(epoch FROM date_submitted)::float8 FROM {s}.asynctask_queue
WHERE queue_name = %s AND state = 'queued' AND date_available <= now()
ORDER BY date_available, id LIMIT 1
"""

# The first ready rows in the order workers take them (urgent first, from their own
# index, then the others), read only (no lock, no change).
PEEK = """
SELECT task_id, payload, payload_text, attempts, submitted FROM (
    (SELECT task_id, payload::text AS payload, payload_text, attempts,
            extract(epoch FROM date_submitted)::float8 AS submitted,
            priority, date_available, id
     FROM {s}.asynctask_queue
     WHERE queue_name = %(queue)s AND state = 'queued' AND priority > 0
       AND date_available <= now()
     ORDER BY priority DESC, date_available, id LIMIT %(limit)s + %(offset)s)
    UNION ALL
    (SELECT task_id, payload::text, payload_text, attempts,
            extract(epoch FROM date_submitted)::float8, priority, date_available, id
     FROM {s}.asynctask_queue
     WHERE queue_name = %(queue)s AND state = 'queued' AND priority <= 0
       AND date_available <= now()
     ORDER BY date_available, id LIMIT %(limit)s + %(offset)s)
) AS head
ORDER BY priority DESC, date_available, id LIMIT %(limit)s OFFSET %(offset)s
"""

# A page of the rows consumers hold, in the order they were stored (the reserved rows'
# partial index finds them; they are as many as the consumers' prefetch allows). Who holds
# each: the owner of a kept consumer (``keeper``), else the consumer's number and, where
# this role may see it, the address its session came from (the session holding that
# number's advisory lock, read once from pg_locks). Since when: the start of its running
# attempt, from its status; NULL for a task prefetched and not started, or untracked.
IN_FLIGHT = """
WITH page AS (
    SELECT id, task_id, payload::text AS payload, payload_text, attempts, owner, keeper,
           extract(epoch FROM date_submitted)::float8 AS submitted
    FROM {s}.asynctask_queue
    WHERE queue_name = %(queue)s AND state = 'reserved'
    ORDER BY id LIMIT %(limit)s OFFSET %(offset)s
), sessions AS (
    SELECT l.objid::bigint AS number, host(a.client_addr) AS address
    FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
      AND l.classid::bigint = %(lock_class)s
)
SELECT p.task_id, p.payload, p.payload_text, p.attempts, p.submitted, o.owner, p.owner,
       (SELECT min(address) FROM sessions WHERE number = p.owner),
       extract(epoch FROM s.date_started)::float8
FROM page AS p
LEFT JOIN {s}.asynctask_owner AS o ON o.id = p.keeper
LEFT JOIN {s}.asynctask_status AS s ON s.task_id = p.task_id AND s.state = 'running'
ORDER BY p.id
"""


@dataclass(frozen=True)
class Statements:
    """The statements above with the schema name filled in."""

    put: LiteralString
    put_one: LiteralString
    put_one_untracked: LiteralString
    put_unique: LiteralString
    reserve_tracked: LiteralString
    reserve_untracked: LiteralString
    start: LiteralString
    start_running: LiteralString
    next_due: LiteralString
    settle: LiteralString
    sweep: LiteralString
    orphans: LiteralString
    enlist: LiteralString
    own: LiteralString
    beat: LiteralString
    end_owner: LiteralString
    take: LiteralString
    keep_failed: LiteralString
    stats: LiteralString
    sample: LiteralString
    queue_names: LiteralString
    all_stats: LiteralString
    purge: LiteralString
    purge_ids: LiteralString
    failed: LiteralString
    failed_holds: LiteralString
    requeue_failed: LiteralString
    purge_failed: LiteralString
    purge_failed_ids: LiteralString
    claim: LiteralString
    oldest_ready: LiteralString
    limit_lock: LiteralString
    limit_prune: LiteralString
    limit_count: LiteralString
    limit_add: LiteralString
    limit_free: LiteralString
    peek: LiteralString
    in_flight: LiteralString

    @classmethod
    def for_schema(cls, schema: str) -> Statements:
        """Fill every statement in for ``schema``."""
        texts = {name: globals()[name.upper()] for name in cls.__dataclass_fields__}
        return cls(**{name: sql(text, schema) for name, text in texts.items()})
