"""What profiling showed where a target is missed: (transport, measure) -> the reason.

Written by hand from ``python -m bench.profile`` (py-spy, ``--idle``, the main thread of
the worker child or the submitting process) and side measurements on the same machine;
the report prints the entry beside each missed target. Profiled at commit b426961
(2026-11-29); the drains again after core's prefetch 4 default (99d829f); pgsql again
for issue 20 (2026-12-07: pg_stat_statements and EXPLAIN on a private server, the
consumer's asynchronous commit; the submit path with callgrind, wt/pgsubmit). Update an
entry when its transport changes.
"""

from __future__ import annotations

_PG_DRAIN = (
    "Latest (issue 20, branch wt/pgdrain, 2026-12-07; the machine shared, load 5-16): "
    "py-spy on the worker child at prefetch 4: 64% of its main thread waited for RESERVE "
    "(one statement per 4 tasks) and 11% for the bare Sync each prefetched start sent to "
    "hear cancels. That Sync now goes only when the consumer's last statement or Sync left "
    "5 ms ago or more (`CANCEL_HEARD`: a cancel of a reserved task returns 5 ms after its "
    "commit, so a start never misses one that returned): the in-process prefetch-4 drain "
    "went from 2,408/s to 4,926/s (medians of 4 alternating rounds of 5,000, load 4.7). "
    "The rest is the RESERVE's server time, mostly fixed per statement, so pgsql's default "
    "prefetch is now 16 (`default_prefetch`): worker child drains, medians of 3 "
    "alternating rounds of 20,000 at load 8-10: 3,131/s at 4, 3,655/s at 8, 4,059/s at 16, "
    "8,040/s at 32, PgQueuer 567/s; at 16 the child still waits 54% of its time for "
    "RESERVE. Sending the next RESERVE ahead (libpq pipeline mode, its rows read when the "
    "buffer runs dry) did not help here: 3,012/s without, 2,212/s sent at half the buffer, "
    "2,666/s at its end (medians of 4 alternating rounds of 20,000, load 11-16): both "
    "cores are busy, so the overlap buys nothing and smaller batches cost more; not "
    "landed. PgQueuer's rate falls faster with the load than ours (2,332/s at load 6, "
    "530-970/s at 8-11), so the ratio does too: 1.6x at load 6 with prefetch 4 before "
    "this work. What would close more: the RESERVE's per-row writes (see below: the "
    "`succeeded` and `reserved` updates are not HOT). Earlier: "
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
    "Issue 20, 2026-12-07 (wt/pgsubmit). A submit is one statement and one round trip "
    "(pg_stat_statements on a private server: 1,000 statements for 1,000 submits), its "
    "status row written by a CTE of the same statement. On the server it costs what the "
    "raw INSERT costs: 80-96 us of execution (the task row, its status row, the NOTIFY) "
    "against 92 us for the raw INSERT plus 6 us for the copied trigger's statement (the "
    "trigger's transition table and DISTINCT sort cost more than our one pg_notify), "
    "700 WAL bytes against 440 (the status row). The gap was the submitting process: "
    "callgrind, instructions per submit, which the machine's load does not move: 458k "
    "before, 131k for the raw client's `execute`. Where they went: psycopg's cursor "
    "(about 45k a call, 3.5k a parameter, a new cursor each call 47k more), the pool's "
    "`connection()` context (53k; getconn/putconn 30k), json.dumps with options (22k: it "
    "builds an encoder each call), the queue-name regex (11k), a 14-parameter statement "
    "with a uuid array. Now 124-134k: the one-task statement without a unique key is "
    "prepared once per pooled connection and sent with libpq's `exec_prepared` "
    "(`Connection.pgconn`, text parameters, no answer read: about 10k), core keeps a C "
    "JSON encoder and checks a queue name once. Wall time, same run, turns of 50 "
    "alternating: on the shared server at load 14-16, ours 179/s against raw 180/s "
    "(1.00x; fsync-bound); `make bench`'s steps at load 10-16: 0.93x, 0.63x on the "
    "fresh schema, 1.09x churned (turns of 50, fsync latency moving by several times "
    "within seconds; the fresh row was 1.01-1.05x in private-server runs, 0.64-0.88x "
    "when it ran second in the process: not explained); on a private server with fsync "
    "off (the client's share "
    "largest) at load 12, median 863 us against 789 us a submit (0.91x), best 425 "
    "against 464 us. On 2 cores at load 8-20, every microsecond of CPU on either side "
    "costs several of wall time, so the remaining server cost of the status row "
    "(about 25 us of execution) shows too; a submit that wrote no status row "
    "(untracked queues, main's asynctask.untracked) saves it."
)

_PG_LATENCY = (
    "Since wt/pgdrain (2026-12-07) a prefetched start right after a wake-up sends nothing "
    "(the RESERVE just answered was the question for cancels): wake-up, RESERVE, "
    "`process()`, one round trip as the raw listener's DELETE. Three runs of the latency "
    "step, load 6-9: p50 6.28 ms against LISTEN 11.07 ms (before the change), 4.36 against "
    "16.76, 5.77 against 6.63 ms (after): the raw listener's p50 moves more than ours. "
    "The churned table's latency includes the submit (from before `submit_task` to the "
    "start), which is slow there (submit one by one 8/s). On a private PostgreSQL (fsync "
    "off, autovacuum off; load 13-14) the same steps missed: p50 5.62 against 2.44 ms "
    "(2.30x), fresh table 26.76 against 4.50 ms (this branch's tests ran meanwhile), "
    "churned 5.86 against 24.16 ms. A trace in one process on that server (load 14): "
    "`submit_task` 1.4-1.9 ms, its NOTIFY to the consumer's `select` 0.07 ms, the wake to "
    "RESERVE's answer 0.8-1.0 ms: with no fsync to hide them, the submit and the RESERVE, "
    "each heavier than the raw INSERT and DELETE (the status row, the reserved mark), "
    "are the gap. Earlier: "
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
    "(2,000 tasks, instructions per task, which the machine's load does not move). Since "
    "issue 16's late running marks (2026-12-07) a tracked task taken ahead sends nothing "
    "at its start: `python -m bench.taskcost` counts 0.25 round trips a task at prefetch "
    "4 and 0.03 at 32, tracked, as untracked. Untracked, one child at prefetch 32 ran "
    "0.34x the raw loop in one run of this step (loaded machine; 0.06x before issue 20's "
    "work on the worker's cost). That work (instructions a task, before -> after, "
    "untracked): 121.0k -> 97.9k at prefetch 32, 145.8k -> 122.0k at 4 (a message "
    "decoded by json's C scanner into a plain slots dataclass: 46.7k -> 22.7k; the idle "
    "OpenTelemetry and Prometheus hooks a call shorter); one report write a task, not two "
    "(strace); the supervisor reads the report pipe every 20 ms instead of at every line "
    "(it used as much CPU as the child: the whole command's CPU 39 -> 23 us a task, "
    "context switches 1.4 -> 0.1, perf stat); the untracked move takes a whole batch with "
    "ZPOPMIN, LPOP and RPUSH and removes in-order acks with one LTRIM (Redis's time 12 -> "
    "5 us a task, INFO commandstats, loaded). The raw loop's client costs 32.7k "
    "instructions a task (LPOP 100 and a json.loads each): of ours, the idle plugins' "
    "hooks are about 15k, the decode 23k, the report write, the hooks' core and logging "
    "a few k each. What would close more of the gap is asking for the next batch before "
    "the current one is done (the time inside round trips, the wire and Redis's work, is "
    "still more than ours at 32 in the table above)."
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
        "Until issue 16's late running marks (2026-12-07), each of the three tasks a "
        "prefetch-4 move takes ahead sent a `START` script at its start (first waited for, "
        "then sent unanswered): a message a task, each costing the worker a send and "
        "Redis a wake-up, a script and a reply on the 2 cores the worker shares (even a "
        "`START` that did nothing left the in-process drain at 0.36-0.57x). Now a start "
        "the consumer knows needs no verdict (cancel feed live, no `expires`) waits with "
        "the pending acks and goes with the next move, or within 20 ms from a thread of "
        "the consumer while the task runs on (`asynctask_redis.startmarks`); a start and "
        "its ack are one `HMGET` and one `HSET`; acks carry the task id (no parse in "
        "Lua); `START` is built with the finishing helpers only; a move checks the tasks "
        "it takes ahead only while a cancelled task has not been met (`P:Q:cancelled`). "
        "Redis's work a task at prefetch 4 (redis-server under callgrind, 2,000 tasks): "
        "240k -> 135k instructions (untracked 55k), one script call a move as untracked. "
        "Same-run alternating drains (1 child, 10,000 tasks, load 9-16 on 2 cores): "
        "tracked/untracked per round 0.44-1.10, median 0.99 (main: 0.11-1.28, median "
        "0.36), but best against best 0.66x (5,131/s vs 7,817/s; main 0.36x); "
        "`python -m bench --only redis --steps status`, 10 runs: 0.41-1.90x, 7 of 10 at "
        "or above 0.7x (main's redis package in the same session: 0.14-0.47x). Not "
        "reliably met: when the machine is quieter the untracked drain gains more, since "
        "the move's script, which every fourth task waits for, does 2.4x Redis's work "
        "(the acks' `HMGET`, `HSET`, `EXISTS` of a waiter and two `PEXPIRE`, status and "
        "pointer, per task). What is left to try: one key per task (no pointer, so one "
        "`PEXPIRE`), the waiter's mark in the status hash (no `EXISTS`), the next move "
        "sent before the last task taken ends. "
        "`python -m bench.status_cost --only redis`: prefetch 1 0.51x (main 0.38x), "
        "prefetch 4 0.57x (main 0.25x): at prefetch 1 each task is the first of its "
        "move, marked running in the move's script (about 245k instructions a task "
        "against 37k for the untracked plain pipeline)."
    ),
    ("localmem", "tracking"): (
        "Load-independent (2026-12-07, callgrind on the run loop in one process, "
        "`python -m bench.taskcost --instructions --uri localmem:bench --prefetch 1 "
        "--tasks 2000 --untracked`): tracking added 21.3k instructions a task (101.9k "
        "against 80.6k untracked, 0.79x), now 11.4k (90.6k against 79.2k, 0.87x): the "
        "consumer's start and success write the record with the transport's lock held "
        "and no call they do not need (no re-entered lock, no TTL passed per call, "
        "records with `__slots__`, the forget heap purged only when its head is due); "
        "Python calls a task 109 -> 94 tracked, 84 -> 81 untracked. The wall-clock row "
        "drains in threads of the bench's own process, so the machine's load moves it "
        "more than any other: at load 7-14 its pairs ranged 0.36-1.16x with the same "
        "code, hence the median of ABBA pairs and drains sized to last 1.5 s. The row "
        "after these cuts: 0.83x at load 14-15 (pairs 0.61-1.16x), 0.55x at load 9-10 "
        "(pairs 0.29-1.32x), 0.82x at load 6-9 (pairs 0.60-1.04x), 0.88x on a quiet "
        "machine (load 1.2-1.5, pairs 0.81-1.01x), the drain thread "
        "getting a fifth of a core at times; its CPU "
        "time per task in the same sequence of drains (4 ABBA pairs of 40,000, load "
        "11): 16.3-20.1 us tracked against 14.4-17.7 us untracked, medians 0.85x."
    ),
    ("filesys", "tracking"): (
        "A tracked task costs four more system calls than an untracked one, and no "
        "more (`tests/filesys/test_status.py` counts them; `strace -f -c` of the whole "
        "`asynctask workers` draining 3,000 tasks: +3,013 `openat`, +3,000 `write`, "
        "+3,007 `close`, +3,000 `rename`): the start's mark (`open`, "
        "`write` of one byte, `close`) and the success's `rename` of the record from "
        "`live/` to `done/<END>/`; nothing is fsynced. On this ext4 disk alone "
        "(2026-12-07) the mark takes 5.5 us of CPU and a cross-folder rename 16-17 us, "
        "against about 100 us for the whole untracked task in the worker child. Our "
        "Python adds 16.7k instructions a task (callgrind, run loop: 214.3k tracked "
        "against 197.6k untracked; 22.6k before the success became one rename tried "
        "first). In the worker child (the `bench_cpu` worker, 4 ABBA pairs of 5,000 "
        "tasks, load 12-13) CPU per task was 136-161 us tracked against 97-118 us "
        "untracked (medians 143 and 109: 0.76x), while the drain rates of the same "
        "runs were 1,568-2,874/s against 2,835-5,629/s (0.48x of the medians): under "
        "other processes' disk work a rename and a write wait for the journal, which "
        "CPU time does not show. The row after these cuts: 0.68x of the medians at load "
        "14 (pairs 0.33-3.41x, their median 0.80x), 0.97x at load 9-11 (pairs "
        "0.89-1.61x), 0.62x at load 8-9 (pairs 0.48-0.94x), and 0.66x on a quiet "
        "machine (load 1.3-2.0: 6,136/s against 9,332/s, pairs 0.50-0.92x): not 0.7x. "
        "There the child's CPU per task was 137-189 us tracked against 98-101 us "
        "untracked, more than the 22 us the two system calls take alone: not explained "
        "yet (the journal's waits and the size of `done/<END>/` are the suspects). The "
        "disk, shared with other work, made one 10,000-task fill take "
        "up to 25 s. What would cut more is a "
        "record layout with no "
        "per-task move (a success that appends to the record, forgetting by folders of "
        "submission), not done here."
    ),
    ("amqp", "tracking"): (
        "AMQP keeps its statuses in another store (here the bench's Redis, "
        "`asynctask_state`): core's generic path makes two round trips to it a task, "
        "`started` before `process()` and `settled` after, on top of the broker's own "
        "work (measured 2026-12-07, not profiled further)."
    ),
}
