"""What profiling showed where a target is missed: (transport, measure) -> the reason.

Written by hand from ``python -m bench.profile`` (py-spy, ``--idle``, the main thread of
the worker child or the submitting process) and side measurements on the same machine;
the report prints the entry beside each missed target. Profiled at commit b426961
(2026-11-29); the drains again after core's prefetch 4 default (99d829f). Update an entry
when its transport changes.
"""

from __future__ import annotations

_PG_DRAIN = (
    "py-spy on the worker child (prefetch 4): 63% of its main thread waits in psycopg "
    "`Connection.wait` and 11% sends, for the one statement per 4 tasks (RESERVE: `UPDATE "
    "... FOR UPDATE SKIP LOCKED` that also deletes the acked rows) and its commit; "
    "asynctask's own Python is under 10%. Per row the statement writes two versions "
    "(reserved, then deleted) where the raw `DELETE ... RETURNING` writes one, and it "
    "stayed 1.5x the raw loop's cost per row with `synchronous_commit=off` on both in a "
    "side run, so it is server work, not the WAL flush. Prefetch amortizes it: the prefetch "
    "row shows the same consumer at prefetch 1 and 10."
)

_AMQP_DRAIN = (
    "py-spy on the worker child (prefetch 4): 76% of its main thread is blocked in py-amqp "
    "`TCPTransport._read` waiting for RabbitMQ's next delivery, 8% writes the `basic.ack`, "
    "the run loop and decoding are about 12%. Side runs on 20,000 tasks split the gap to "
    "the raw consumer (same prefetch): the raw consumer drains our messages at 11,500-"
    "11,800/s against 14,200-15,400/s for its own, so the headers each task carries (id, "
    "attempts, submission time) cost the broker and the decoder about 20%; our consumer "
    "in-process does 10,200-10,600/s (about 10% for asynctask's consumer); the worker child "
    "adds the run loop (settle, watchdog, the ledger write of this benchmark) on top."
)

_REDIS_DRAIN = (
    "py-spy on the worker child: about 70% of its main thread is in the socket (50% "
    "waiting for Redis's reply, 20% sending) for the one pipelined round trip per task "
    "(`LREM` of the previous ack + `LMOVE` into the consumer's processing list); "
    "asynctask's run loop is about 12%. The raw loop is one `BRPOP` with no ack to send, "
    "and the two trade places from run to run on this machine (0.6x-1.6x). Prefetch 10 "
    "triples the rate (the prefetch row)."
)

FINDINGS: dict[tuple[str, str], str] = {
    ("filesys", "submit_one"): (
        "py-spy (`--measure submit`): 68% of the time is the task file's write+fsync and "
        "14% the folder's fsync, the same two fsyncs as the raw client; Python is under 5%. "
        "Both sides are the disk's fsync latency, which other work on the machine moves."
    ),
    ("redis", "submit_one"): (
        "py-spy (`--measure submit`): 85% of a `submit_task` is the one `RPUSH` round "
        "trip, the same command the raw client sends; the rest is asynctask's Python "
        "(`uuid4` id, payload check, the envelope), about 14%."
    ),
    ("redis", "drain_1"): _REDIS_DRAIN,
    ("amqp", "submit_one"): (
        "py-spy (`--measure submit`): 67% of a `submit_task` waits for the publisher "
        "confirm and 7% writes, as the raw publish does; asynctask's Python is under 10%."
    ),
    ("pgsql", "submit_one"): (
        "py-spy on the submitting process (`--measure submit`): 81% of each `submit_task` "
        "waits for PostgreSQL (`Connection.wait`), 14% sends; asynctask's Python (ids, "
        "validation, pool) is about 5%. The server does more than the raw INSERT: the "
        "statement trigger sends a NOTIFY at commit (the wake-up of idle workers) and the "
        "row enters two indexes (primary key, ready). In a side run the raw INSERT with a "
        "`pg_notify` in the same statement did 2,100-2,900/s against 3,400-3,500/s without: "
        "ours is at the level of the raw client that also wakes a listener."
    ),
    ("pgsql", "submit_batch"): (
        "py-spy (`--measure batch`): 35-46% waits for the server; 22-31% is psycopg adapting "
        "the three text arrays of `INSERT ... SELECT FROM unnest(...)` in Python "
        "(`ListDumper._dump_list`, with a regex escape per element), 10-13% is `uuid4()` "
        "task ids. The raw multi-row INSERT passes 1,000 plain text parameters and makes no "
        "ids. A binary array dumper or COPY would remove most of the adaptation."
    ),
    ("pgsql", "drain_1"): _PG_DRAIN,
    ("pgsql", "peer"): _PG_DRAIN,
    ("pgsql", "latency_p50"): (
        "A timed trace of the consumer (each statement and wait): the path is the submit's "
        "commit (0.6 ms), the NOTIFY wake-up, then RESERVE with its commit (0.7 ms); the "
        "raw listener's path is the same but ends with a plain DELETE (about 0.4 ms). "
        "RESERVE writes more: an UPDATE marking the row reserved plus the delete of the "
        "previous acks, two row versions per task against the raw DELETE's one. When the "
        "worker is still busy with its previous cycle (the ack riding on an empty RESERVE, "
        "then `next_due`), a task waits for that too."
    ),
    ("amqp", "drain_1"): _AMQP_DRAIN,
    ("amqp", "peer"): _AMQP_DRAIN,
    ("redis", "tracking"): (
        "Not round trips any more: until 2026-12-07 each of the three tasks a prefetch-4 "
        "move takes ahead waited for a `START` reply (0.26-0.33x in same-run A/B runs); "
        "now it is sent unanswered (0.51-0.82x in the same runs). What is left is Redis's "
        "own work, measured "
        "with `INFO commandstats` on a private redis-server: about 100-120 µs of server "
        "time a task tracked against 30-45 µs untracked on this loaded host, in the `NEXT` "
        "and `START` scripts (two `HMGET`, two `HSET`, two `PEXPIRE`, an `EXISTS`, the "
        "calls' own cost inside Lua, several µs each); on 2 cores shared with the worker "
        "that is time the worker waits for."
    ),
    ("amqp", "tracking"): (
        "AMQP keeps its statuses in another store (here the bench's Redis, "
        "`asynctask_state`): core's generic path makes two round trips to it a task, "
        "`started` before `process()` and `settled` after, on top of the broker's own "
        "work (measured 2026-12-07, not profiled further)."
    ),
}
