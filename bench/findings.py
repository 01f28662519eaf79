"""What profiling showed where a target is missed: (transport, measure) -> the reason.

Written by hand from ``python -m bench.profile`` (py-spy, ``--idle``, the main thread of
the worker child or the submitting process) and side measurements on the same machine;
the report prints the entry beside each missed target. Profiled at commit b426961
(2026-11-29); the drains again after core's prefetch 4 default (99d829f); pgsql again
for issue 20 (2026-12-07: pg_stat_statements and EXPLAIN on a private server, the
consumer's asynchronous commit). Update an entry when its transport changes.
"""

from __future__ import annotations

_PG_DRAIN = (
    "Where a pgsql drain's time goes (issue 20; a private PostgreSQL 15 with "
    "pg_stat_statements, the machine shared with other work, 2 cores). The worker child "
    "(py-spy, prefetch 4) spends 60-70% of its main thread in psycopg `Connection.wait` for "
    "its one statement per 4 tasks (RESERVE, which also deletes the 4 acknowledged rows "
    "and writes their `succeeded`); asynctask's run loop, hooks and decoding are under "
    "15%. Until this change every RESERVE also waited for a WAL fsync (1.5-4 ms on this "
    "disk under load, `pg_test_fsync`): a consumer's session now commits asynchronously "
    "(a lost commit only makes a task run again; `?durable_acks=true` restores the wait), "
    "which took the same drain from 647-964/s to 1,177-1,866/s (private server, 4 "
    "alternating rounds of 5,000) and, on the shared server in alternating rounds with "
    "PgQueuer (its tables vacuumed first, as ours are), from 1.0-1.1x PgQueuer with "
    "`durable_acks=true` to 1.6-1.9x (PgQueuer's own dequeue takes 1.07 ms of server time "
    "per ~9 jobs, our RESERVE 0.46-0.53 ms per 4). "
    "On the server, `EXPLAIN (ANALYZE, BUFFERS)` of a RESERVE of 4 rows: 0.44 ms and 75 "
    "buffers mark the 4 acknowledged statuses `succeeded` (not a HOT update: `date_forget` "
    "is in the index `asynctask_status_forget`), 0.33 ms and 70 buffers mark the 4 new "
    "rows `reserved` (not HOT either: `state` is in the partial indexes' predicates, so "
    "each update adds an entry to the primary key, `task_id` and `reserved` indexes); the "
    "head scan (0.06 ms) and the delete (0.03 ms) are small. At 3x PgQueuer (about "
    "6,000/s against its 2,000/s unloaded) a task may cost 170 us in all, while our "
    "server's part alone is 110-130 us a task at prefetch 4. What would close 3x: fewer "
    "index entries per task (a reservation that is a HOT update: the claim kept in "
    "non-indexed columns; a forget time fixed at submit so that `succeeded` is a HOT update "
    "of the status row), or a larger prefetch (PgQueuer takes 10 at a time; ours takes the "
    "worker's prefetch, 4 by default: one round trip per 10 instead of per 4 tasks; a side "
    "run at load 16-23: prefetch 4 863-1,114/s, prefetch 10 1,181-1,450/s, PgQueuer "
    "308-344/s). The ratio moves with the machine's load: 1.6-1.9x at load 8-12, above 3x "
    "at load 16-23, where PgQueuer's more round trips per job suffer more. "
    "Later the same day (`python -m bench.hot --private`: private schemas on a private "
    "PostgreSQL 15 with pg_stat_statements, one in-process consumer, 3,000-task drains in "
    "alternating rounds, load 7-14): the consumer's RESERVE is planned once, generically, "
    "and that plan, not knowing the head's size, joined the taken rows by a hash join over "
    "a sequential scan of the whole queue table (and the expired statuses over one of the "
    "status table): 1.86 ms and 372 buffers a RESERVE of 4 on 5,000 rows, against 0.48 ms "
    "and 143 buffers with hash and merge joins off in the consumer's session, now the "
    "default (median drain 1,203/s against 1,639/s in the same run; the scan grew with the "
    "queue). HOT updates, measured in the same way on layouts that allow them (the status "
    "forget index dropped; no index naming `state`, the queue at fillfactor 70): they halve "
    "a RESERVE's WAL (2,980 to 1,490 bytes) but neither its server time (1.22 against "
    "1.25 ms) nor its buffers went down, and the drains moved within the noise (prefetch 4: "
    "1,615/s as is against 1,797/s all HOT; prefetch 10: 4,077/s against 4,132/s, one run; "
    "another run had them the other way round), while a reservation kept out of the indexes "
    "would need a schema version that older workers on the same queue cannot share. "
    "Prefetch 10 against 4 in the same run: 4,077/s against 1,615/s. The worker drain "
    "did not confirm the plan fix yet: `python -m bench.compare main --only pgsql --steps "
    "drain` (full sizes, 2 rounds, load 9-14) gave 2,011/s against main's 2,153/s with 1 "
    "child and 2,373/s against 2,771/s with 2 (the shared table's statistics there may "
    "already give main nested loops); the quick run before it had +55% and -39%."
)

_PG_SUBMIT = (
    "pg_stat_statements (private server): a submit is one statement, 161 us of server time "
    "and 751 WAL bytes (the task row and its status row, NOTIFY in the statement) against "
    "141 us and 426 bytes for the raw INSERT into a copy of the queue table with the same "
    "indexes and trigger (63 us without the trigger, whose transition table and NOTIFY are "
    "most of it; 41 us with the primary key alone, 25 us bare: the `insert_*` rows give each "
    "index's cost). Both commit with one WAL fsync, which is most of either side's time on "
    "this disk. The rest is the client: 440 us of CPU per `submit_task` against 200 us for "
    "the raw `execute` (same run, under load): payload checks, the task id, the submit "
    "hooks, the pool checkout and psycopg adapting the 14 parameters. A submit that wrote "
    "no status row (statuses kept elsewhere, `asynctask_state`) would save the second row "
    "and its two index entries, about 20 us of the server's time."
)

_PG_LATENCY = (
    "A timed trace of the consumer: the path is the submit's commit (its fsync), the "
    "NOTIFY wake-up, then RESERVE (now committed asynchronously); the raw listener's path "
    "is the same commit and NOTIFY (the copied trigger) and a plain DELETE. RESERVE writes "
    "more (the row marked reserved, the previous task's status `succeeded`). When the "
    "worker is still busy with its previous cycle, a task waits for that too."
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

_REDIS_COST = (
    "`python -m bench.taskcost` (the table above) and callgrind on the child's run loop "
    "(2,000 tasks, instructions per task, which the machine's load does not move): with "
    "statuses tracked, the default, every task started costs one round trip (1.00 per "
    "task at prefetch 32 and at 4): the consumer's `start()` marks it `running` and "
    "waits for the reply, so prefetch saves moves but not that mark, and the drain is "
    "bound by the round trip whatever the prefetch. Untracked, the same child at prefetch "
    "32 makes 0.03 round trips per task and ran 0.34x the raw loop in the same run (the "
    "untracked row; 0.06x before issue 20's work on the worker's cost). That work "
    "(instructions a task, before -> after): 121.0k -> 95.4k untracked at 32, 145.8k -> "
    "119.5k at 4, 232.5k -> 207.0k tracked at 4 (a message decoded by json's C scanner "
    "into a plain slots dataclass: 46.7k -> 22.7k; the idle OpenTelemetry and Prometheus "
    "hooks a call shorter); one report write a task, not two (strace); the supervisor "
    "reads the report pipe every 20 ms instead of at every line (it used as much CPU as "
    "the child: the whole command's CPU 39 -> 23 us a task, context switches 1.4 -> 0.1, "
    "perf stat); the untracked move takes a whole batch with ZPOPMIN, LPOP and RPUSH and "
    "removes in-order acks with one LTRIM (Redis's time 12 -> 5 us a task, INFO "
    "commandstats, loaded). The raw loop's client costs 32.7k instructions a task (LPOP "
    "100 and a json.loads each): of ours, the idle plugins' hooks are about 15k, the "
    "decode 23k, the report write, the hooks' core and logging a few k each. What closes "
    "the tracked gap is a running mark that does not wait for its reply (the redis "
    "status work of issue 16); what would close more of the untracked one is asking for "
    "the next batch before the current one is done (the time inside round trips, the "
    "wire and Redis's work, is still more than ours at 32 in the table above)."
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
    ("redis", "cost_p32"): _REDIS_COST,
    ("amqp", "submit_one"): (
        "py-spy (`--measure submit`): 67% of a `submit_task` waits for the publisher "
        "confirm and 7% writes, as the raw publish does; asynctask's Python is under 10%."
    ),
    ("pgsql", "submit_one"): _PG_SUBMIT,
    ("pgsql", "submit_one_fresh"): _PG_SUBMIT,
    ("pgsql", "submit_one_churned"): _PG_SUBMIT,
    ("pgsql", "submit_batch"): (
        "py-spy (`--measure batch`): 35-46% waits for the server; 22-31% is psycopg adapting "
        "the three text arrays of `INSERT ... SELECT FROM unnest(...)` in Python "
        "(`ListDumper._dump_list`, with a regex escape per element), 10-13% is `uuid4()` "
        "task ids. The raw multi-row INSERT passes 1,000 plain text parameters and makes no "
        "ids. A binary array dumper or COPY would remove most of the adaptation."
    ),
    ("pgsql", "drain_1"): _PG_DRAIN,
    ("pgsql", "peer"): _PG_DRAIN,
    ("pgsql", "latency_p50"): _PG_LATENCY,
    ("pgsql", "latency_p50_fresh"): _PG_LATENCY,
    ("pgsql", "latency_p50_churned"): _PG_LATENCY,
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
