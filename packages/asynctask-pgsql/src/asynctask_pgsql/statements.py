"""Every statement the pgsql transport sends, each one round trip, for one schema.

Rows are ``state = 'queued'`` (ready once ``date_available`` has passed), ``'reserved'``
(``owner`` is the consumer holding it) or ``'failed'`` (the failed store). A row is taken
in ``(date_available, id)`` order through the partial index ``asynctask_queue_ready``, so
taking one costs the same at 10 or 1,000,000 waiting rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import LiteralString

from asynctask_pgsql.schema import sql

# A consumer's acknowledgements ride along with its next statement ("done"). A row has an
# owner exactly while it is reserved; leaving ``state`` out keeps the plan on the primary key.
_DONE = """done AS (
    DELETE FROM {s}.asynctask_queue
    WHERE id = ANY(%(acks)s::bigint[]) AND owner = ANY(%(owners)s::int[])
)"""

_NOTIFY = """SELECT pg_notify({s}.asynctask_channel(queue_name), '')
FROM (SELECT DISTINCT queue_name FROM moved) AS m"""

_BAD = "(payload_text IS NULL AND jsonb_typeof(payload) <> 'object')"

_UNDECODABLE = (
    "'undecodable message: expected a JSON object, got a JSON ' || jsonb_typeof(t.payload)"
)

# Our own connections set asynctask.notify = off, which silences the insert trigger: one
# pg_notify per statement is cheaper than the trigger's transition table.
_NOTIFY_PUT = """
SELECT pg_notify({s}.asynctask_channel(%(queue)s), '') FROM (SELECT 1 FROM put LIMIT 1) AS one
"""

PUT_ONE = (
    """WITH put AS (
INSERT INTO {s}.asynctask_queue
    (task_id, queue_name, payload, payload_text, date_available, headers)
VALUES (%(id)s::uuid, %(queue)s, coalesce(%(payload)s::jsonb, '{}'), %(text)s,
        now() + make_interval(secs => %(delay)s), %(headers)s::jsonb)
ON CONFLICT (task_id) DO NOTHING
RETURNING 1
)"""
    + _NOTIFY_PUT
)

# A task id is unique in the table (index asynctask_queue_task_id): a submit retried after
# a lost reply writes nothing the second time (ON CONFLICT DO NOTHING).
# unnest yields its rows in order, and the insert numbers them (``id``) in that order.
# The arrays travel in binary (%b): text arrays would be escaped element by element in
# Python, which cost more than the server's work (batch submit 1.5x faster).
PUT = (
    """WITH put AS (
INSERT INTO {s}.asynctask_queue
    (task_id, queue_name, payload, payload_text, date_available, headers)
SELECT t.id, %(queue)s, coalesce(t.payload::jsonb, '{}'), t.text,
       (SELECT now() + make_interval(secs => %(delay)s)), t.headers::jsonb
FROM unnest(%(ids)b::uuid[], %(payloads)b::text[], %(texts)b::text[], %(headers)b::text[])
    AS t(id, payload, text, headers)
ON CONFLICT (task_id) DO NOTHING
RETURNING 1
)"""
    + _NOTIFY_PUT
)

RESERVE = f"""
WITH {_DONE}, head AS (
    SELECT id, {_BAD} AS bad FROM {{s}}.asynctask_queue
    WHERE queue_name = %(queue)s AND state = 'queued' AND date_available <= now()
    ORDER BY date_available, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), taken AS (
    UPDATE {{s}}.asynctask_queue AS t
    SET state = CASE WHEN head.bad THEN 'failed' ELSE 'reserved' END,
        owner = CASE WHEN head.bad THEN NULL ELSE %(owner)s END,
        keeper = CASE WHEN head.bad THEN NULL ELSE %(keeper)s::int END,
        error = CASE WHEN head.bad THEN {_UNDECODABLE} ELSE t.error END,
        date_failed = CASE WHEN head.bad THEN now() END
    FROM head WHERE t.id = head.id
    RETURNING head.bad, t.id, t.task_id, CASE WHEN head.bad THEN NULL ELSE t.payload END AS p,
        t.payload_text, t.attempts, extract(epoch FROM t.date_submitted)::float8 AS submitted,
        t.date_available, t.headers
)
SELECT bad, id, task_id, p, payload_text, attempts, submitted, headers FROM taken
ORDER BY date_available, id
"""

NEXT_DUE = """
SELECT extract(epoch FROM min(date_available) - now())::float8 FROM {s}.asynctask_queue
WHERE queue_name = %s AND state = 'queued'
"""

SETTLE = f"""
WITH {_DONE}, moved AS (
    UPDATE {{s}}.asynctask_queue
    SET state = %(state)s, owner = NULL, keeper = NULL,
        attempts = greatest(attempts, 0) + %(attempt)s,
        error = coalesce(%(error)s, error),
        date_available = CASE WHEN %(delay)s::float8 IS NULL THEN date_available
                              ELSE now() + make_interval(secs => %(delay)s) END,
        date_failed = CASE WHEN %(state)s = 'failed' THEN now() END
    WHERE id = ANY(%(ids)s::bigint[]) AND owner = ANY(%(owners)s::int[])
    RETURNING queue_name
)
{_NOTIFY}
"""

# A consumer's sweep of its own queue, one sweeper at a time per queue (the others' gate
# lock fails: they skip). It reads only this queue's reserved rows (index
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
    SET state = 'queued', owner = NULL, keeper = NULL, attempts = greatest(t.attempts, 0) + 1
    FROM taken WHERE t.id = taken.id
    RETURNING t.queue_name
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

ENLIST = """
SELECT id, pg_try_advisory_lock(%(lock_class)s::int, id),
    set_config('tcp_keepalives_idle', %(idle)s, false),
    set_config('tcp_keepalives_interval', '1', false),
    set_config('tcp_keepalives_count', '2', false),
    set_config('tcp_user_timeout', %(user_timeout)s, false),
    set_config('plan_cache_mode', 'force_generic_plan', false)
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
    DELETE FROM {s}.asynctask_queue AS t USING gone
    WHERE t.keeper = gone.id AND t.state = 'reserved' AND t.task_id = ANY(%(finished)s::uuid[])
), moved AS (
    UPDATE {s}.asynctask_queue AS t
    SET state = 'queued', owner = NULL, keeper = NULL,
        attempts = greatest(t.attempts, 0)
            + CASE WHEN %(all)s OR t.task_id = ANY(%(started)s::uuid[]) THEN 1 ELSE 0 END
    FROM gone WHERE t.keeper = gone.id AND t.state = 'reserved'
        AND NOT (t.task_id = ANY(%(finished)s::uuid[]))
    RETURNING t.queue_name
)
SELECT (SELECT count(*) FROM moved),
       (SELECT count(pg_notify({s}.asynctask_channel(m.queue_name), ''))
        FROM (SELECT DISTINCT queue_name FROM moved) AS m)
"""

TAKE = f"""
WITH head AS (
    SELECT id, {_BAD} AS bad FROM {{s}}.asynctask_queue
    WHERE queue_name = %s AND state = 'queued' AND date_available <= now()
    ORDER BY date_available, id LIMIT 1
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM {{s}}.asynctask_queue AS t USING head WHERE t.id = head.id AND NOT head.bad
    RETURNING t.task_id, t.payload, t.payload_text, t.attempts, t.date_submitted
), bad AS (
    UPDATE {{s}}.asynctask_queue AS t
    SET state = 'failed', date_failed = now(),
        error = {_UNDECODABLE}
    FROM head WHERE t.id = head.id AND head.bad
    RETURNING t.id
)
SELECT false, task_id, payload, payload_text, attempts, date_submitted FROM gone
UNION ALL SELECT true, NULL, NULL, NULL, NULL, NULL FROM bad
"""

# A text message deleted by TAKE that turned out not to be a task goes to the failed store.
KEEP_FAILED = """
INSERT INTO {s}.asynctask_queue
    (task_id, queue_name, payload_text, attempts, date_submitted, state, error, date_failed)
VALUES (%s, %s, %s, %s, %s, 'failed', %s, now())
"""

# The counts of one queue (in ``%(q)s``), each from its partial index: ready ones are
# counted in the index alone; only tasks not yet due are read from the table. A count
# costs in proportion to that queue's tasks in that state, never to the whole table.
_COUNTS = """
    (SELECT count(*) FROM {s}.asynctask_queue
     WHERE queue_name = %(q)s AND state = 'queued' AND date_available <= now()),
    (SELECT count(*) FROM {s}.asynctask_queue
     WHERE queue_name = %(q)s AND state = 'queued' AND date_available > now() AND attempts = 0),
    (SELECT count(*) FROM {s}.asynctask_queue
     WHERE queue_name = %(q)s AND state = 'queued' AND date_available > now() AND attempts > 0),
    (SELECT count(*) FROM {s}.asynctask_queue WHERE queue_name = %(q)s AND state = 'reserved'),
    (SELECT count(*) FROM {s}.asynctask_queue WHERE queue_name = %(q)s AND state = 'failed')
"""

STATS = "SELECT" + _COUNTS


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

PURGE = "DELETE FROM {s}.asynctask_queue WHERE queue_name = %s AND state = 'queued'"

FAILED = """
SELECT task_id, payload::text, payload_text, error, attempts,
       extract(epoch FROM date_submitted)::float8, extract(epoch FROM date_failed)::float8
FROM {s}.asynctask_queue WHERE queue_name = %s AND state = 'failed'
ORDER BY date_failed, id LIMIT %s
"""

# ``%(all)s`` is true to act on every failed task of the queue, else only on ``ids``.
REQUEUE_FAILED = """
WITH moved AS (
    UPDATE {s}.asynctask_queue
    SET state = 'queued', attempts = 0, error = NULL, date_failed = NULL,
        date_available = now()
    WHERE queue_name = %(queue)s AND state = 'failed'
      AND (%(all)s OR task_id = ANY(%(ids)s::uuid[]))
    RETURNING queue_name
)
SELECT c.n FROM (SELECT count(*) AS n FROM moved) AS c
LEFT JOIN LATERAL (
    SELECT pg_notify({s}.asynctask_channel(%(queue)s), '') WHERE c.n > 0) AS x ON true
"""

PURGE_FAILED = """
DELETE FROM {s}.asynctask_queue WHERE queue_name = %(queue)s AND state = 'failed'
  AND (%(all)s OR task_id = ANY(%(ids)s::uuid[]))
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


@dataclass(frozen=True)
class Statements:
    """The statements above with the schema name filled in."""

    put: LiteralString
    put_one: LiteralString
    reserve: LiteralString
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
    queue_names: LiteralString
    all_stats: LiteralString
    purge: LiteralString
    failed: LiteralString
    requeue_failed: LiteralString
    purge_failed: LiteralString
    claim: LiteralString
    oldest_ready: LiteralString
    limit_lock: LiteralString
    limit_prune: LiteralString
    limit_count: LiteralString
    limit_add: LiteralString
    limit_free: LiteralString

    @classmethod
    def for_schema(cls, schema: str) -> Statements:
        """Fill every statement in for ``schema``."""
        texts = {name: globals()[name.upper()] for name in cls.__dataclass_fields__}
        return cls(**{name: sql(text, schema) for name, text in texts.items()})
