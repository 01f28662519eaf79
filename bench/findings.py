"""What profiling showed where a target is missed: (transport, measure) -> the reason.

Written by hand from ``python -m bench.profile`` (py-spy, ``--idle``, the main thread of
the worker child or the submitting process) and side measurements on the same machine;
the report prints the entry beside each missed target. Profiled at commit b426961
(2026-11-29); the drains again after core's prefetch 4 default (99d829f); pgsql again
for issue 20 (2026-12-07: pg_stat_statements and EXPLAIN on a private server, the
consumer's asynchronous commit; the submit path with callgrind, wt/pgsubmit); redis's
drain and prefetch-32 notes and pgsql's churned rows again at commit 30dc256 (2026-12-07
09:40-09:50: callgrind and cProfile of the run loop on a private Redis; auto_explain and
pg_stat_statements on a private PostgreSQL; wt/bench-ready). A note says what the code
does and when and how it was measured, so that it stays true whatever the next run's
ratio; update an entry when its transport changes.
"""

from __future__ import annotations

_PG_DRAIN = (
    "How a pgsql drain works today (issue 20's work, 2026-12-07): a worker child takes "
    "`prefetch` tasks a statement (16 by default on pgsql, `default_prefetch`; PgQueuer "
    "takes 10): one RESERVE deletes the rows acknowledged since the last one, marks their "
    "statuses `succeeded`, and marks the next rows `reserved`, committed asynchronously "
    "(`durable_acks=false`: a lost commit only runs a task again). A prefetched start sends "
    "nothing unless the consumer's last statement is 5 ms old (`CANCEL_HEARD`). The "
    "consumer's generic plans join by nested loops (a hash join over a scan of the whole "
    "queue table took 1.86 ms and 372 buffers a RESERVE of 4 on 5,000 rows, 0.48 ms and 143 "
    "buffers now; `python -m bench.hot --private`). Profiles (2026-12-07, load 5-16, 2 "
    "shared cores): py-spy on the worker child at prefetch 16: 54% of its main thread "
    "waits for RESERVE (at prefetch 4, 60-70%; asynctask's run loop, hooks and decoding "
    "under 15%). On a private "
    "PostgreSQL 15 (pg_stat_statements, `EXPLAIN (ANALYZE, BUFFERS)`) a RESERVE's server "
    "time is mostly the per-row updates, none of them HOT: `succeeded` changes "
    "`date_forget`, which the index `asynctask_status_forget` holds, and `reserved` changes "
    "`state`, which the partial indexes' predicates name, so each adds index entries "
    "(0.44 ms and 75 buffers, 0.33 ms and 70 buffers of a RESERVE of 4); layouts that allow "
    "HOT updates halved the WAL but not the server time or the drain rate, and would need a "
    "schema version older workers cannot share. Worker child drains against PgQueuer, "
    "medians of 3 alternating rounds of 20,000 at load 8-10: prefetch 4 3,131/s, 8 "
    "3,655/s, 16 4,059/s, 32 8,040/s, PgQueuer 567/s; sending the next RESERVE ahead "
    "(libpq pipeline mode) did not help on 2 busy cores (3,012/s without, 2,212-2,666/s "
    "with; not landed). The ratio moves with the machine's load, PgQueuer's rate more "
    "than ours (2,332/s at load 6, 530-970/s at 8-11): at 3x PgQueuer unloaded (about "
    "6,000/s) a task may cost 170 us in all, our server's part alone about 110-130 us at "
    "prefetch 4. What would close more: fewer index entries per task (a reservation and a "
    "success that are HOT updates), or a larger default prefetch."
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
    "fresh schema, 1.09x churned (its churn then through another queue; turns of 50, "
    "fsync latency moving by several times "
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
    "The path (2026-12-07): the submit's commit (its WAL fsync) and NOTIFY, the consumer's "
    "wake-up, one RESERVE (committed asynchronously), `process()`; the raw listener's path "
    "is the same commit and NOTIFY (the copied trigger) and one plain DELETE. A prefetched "
    "start right after a wake-up sends nothing (the RESERVE just answered was the question "
    "for cancels). RESERVE writes more than the raw DELETE (the row marked reserved, the "
    "previous task's status `succeeded`), and a submit more than the raw INSERT (its status "
    "row): on a private PostgreSQL with fsync off (load 14), a trace in one process gave "
    "`submit_task` 1.4-1.9 ms, NOTIFY to the consumer's `select` 0.07 ms, wake to "
    "RESERVE's answer 0.8-1.0 ms. With fsync on, the commit dominates both sides and the "
    "raw listener's p50 moves more than ours from run to run (three runs of the step at "
    "load 6-9: 6.28 against 11.07 ms, 4.36 against 16.76, 5.77 against 6.63)."
)

_PG_CHURN = (
    "The churned rows (`bench/pgtable.py`, 2026-12-07): 1,000,000 tasks pass through the "
    "measured queue (inserted with their status rows, marked reserved, deleted, statuses "
    "`succeeded` and kept a day) and through the raw table, with no VACUUM since: the "
    "queue table holds 2,000,000 dead tuples, the raw table 900,000, the status table "
    "1,000,000 live rows more. Every take on either side then walks the dead index "
    "entries at the head of the queue. Profile on a private PostgreSQL 15 (autovacuum off "
    "as on the shared server, fsync off, load 8; pg_stat_statements and auto_explain with "
    "`log_analyze` and `log_buffers`; the step itself, `bench.measure` with full churn): "
    "our RESERVE of 16 took 20-35 ms (mean 32 ms) and about 7,800 buffers, of which its "
    "head scan of `asynctask_queue_ready` (`queue_name = $1 AND date_available <= now()`) "
    "read 7,299 pages for 16 rows in 19.8 ms, the rest of the statement 0.7 ms (0.31 ms a "
    "RESERVE on the fresh table); the raw loop's DELETE read 2,797 pages of its narrower "
    "primary key, 2.2 ms a take (its first one 200-340 ms, marking the entries dead). "
    "Same run: drain 459/s against the raw loop's 261/s (2,000 tasks; 4,578/s and 1,169/s "
    "fresh), submit one by one 1,211/s against 1,688/s (0.72x; 1.23x fresh), wake-up p50 "
    "100.2 ms against 4.87 ms (1.57x fresh): an idle worker's RESERVE, woken for one "
    "task, walks the same 7,300 pages while the next tasks arrive 5 ms apart, and the "
    "raw DELETE walks a third as many. What closes it is the VACUUM this step switches "
    "off: with the server's autovacuum off a consumer vacuums the queue and status tables "
    "once 10,000 dead tuples are seen, looked at every `vacuum_every` seconds (60 by "
    "default; this step sets 0 to measure the bloat itself), and the tables carry "
    "autovacuum scale factors of 0.01 for servers that run it; without a VACUUM no form "
    "of the statement skips dead entries at the head of its index. The run of 2026-12-07 "
    "04:41 (commit 9737fca) read submit one by one 8/s (0.00x) and a wake-up p50 of "
    "186 ms (31.79x) here; with that run's churn (through a queue of its own) today's code "
    "gave 1,448/s against 870/s and 1.45 ms against 55.6 ms on the private server: that "
    "run's churn schema had a fixed name, shared with any other bench on the server at "
    "the time (a unique name since c286723). Two defects of the step fixed since: its "
    "churn went through a queue of its own, which our indexes, all led by the queue name, "
    "kept out of the measured scans while the raw loop's ORDER BY id met it; and the raw "
    "wake-up ledger was shared by the latency step, the status step and both table "
    "rounds, so the later raw p50s mixed in earlier wake-ups (`ledger.fresh`)."
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
    "The mechanism (2026-12-07): at the default prefetch 4 a worker child sends one "
    "script call a move, which takes 4 tasks and carries the acknowledgements (and, "
    "tracked, the running marks) of the tasks before: 0.25 round trips a task "
    "(`python -m bench.taskcost`), against the raw loop's one `BRPOP` a task with no "
    "acknowledgement and no status. On 2 cores shared by Redis, the worker child and its "
    "supervisor, the round trip's time is mostly waiting for a core: `python -m "
    "bench.taskcost --tasks 20000 --prefetch 4,32 --untracked` on a private Redis (load "
    "8-10, 09:38 UTC) gave 312 us a task inside round trips against 48 us of ours at "
    "prefetch 4, tracked. The two trade places from run to run on this machine; a "
    "larger prefetch raises ours (the prefetch and cost rows)."
)

_REDIS_COST = (
    "Since issue 16's late running marks (2026-12-07) a tracked task taken ahead sends "
    "nothing at its start: at prefetch 32 one round trip per 30 tasks, tracked or not "
    "(0.034 and 0.033 a task, cProfile of the run loop on a private Redis). What bounds "
    "the ratio is the child's own work: callgrind, instructions a task of the run loop "
    "(`python -m bench.taskcost --instructions --tasks 2000 --prefetch 4,32 --untracked`, "
    "2026-12-07 09:40, commit 30dc256): 162k tracked and 97k untracked at 32, 191k and "
    "123k at 4, against 32.7k for the raw loop's client (`LPOP key 100` and a json.loads "
    "a task). Counting instructions alone, with Redis's work and the round trips free, "
    "tracked at 32 could reach about 0.2x (untracked 0.34x): 0.3x tracked needs the "
    "child's work under about 109k instructions a task. The step alone at full size (`python -m "
    "bench --only redis --steps cost`, shared Redis, 2026-12-07 09:46, load 7.6-8.6): "
    "prefetch 32 tracked 7,800/s, untracked 11,807/s, against the raw loop's 60,629/s "
    "(0.13x and 0.19x); prefetch 4 3,094/s, prefetch 1 1,219/s. The tracked extra, 65-67k "
    "instructions a task (cProfile, tracked against untracked at 32, 5,000 tasks): each "
    "start reads the cancel feed without blocking (`CancelFeed.poll()`: redis-py's "
    "`can_read`, three system calls, two `settimeout` and a `recv`, a task), takes the "
    "consumer's lock (held around each start once the mark thread runs), queues its "
    "running mark and sets the mark thread's Event, and the outcome goes through "
    "`record_outcome`. What would close it: the feed looked at with one `select` "
    "between reads (`CancelFeed.quiet`, which the status feed of AMQP's tracking already "
    "uses; an experiment, wt/bench-ready, not landed: `quiet()` before each "
    "poll took the tracked run loop at 32 from 160.8k to 142.6k instructions a task) or "
    "read once a move rather than once a start (as pgsql's 5 ms `CANCEL_HEARD` window "
    "does), the mark thread woken once a batch. Earlier work on the untracked "
    "path (issue 20, instructions a task, before -> "
    "after): 121.0k -> 97.9k at prefetch 32 (json's C scanner into a slots dataclass: the "
    "decode 46.7k -> 22.7k; idle OpenTelemetry and Prometheus hooks shorter; one report "
    "write a task; the supervisor reads the report pipe every 20 ms; the untracked move "
    "takes a batch with ZPOPMIN, LPOP and RPUSH and acknowledges in-order acks with one "
    "LTRIM)."
)

_PEER_DRAIN = (
    "Not profiled on its own: the row is the 1-child drain (default prefetch) against "
    "the fastest peer's worker, so the drain row's note says where the time goes. Huey "
    "takes one task a `BRPOP` and acknowledges nothing (a task whose consumer dies is "
    "lost); Dramatiq keeps a message in an ack set until the actor returns; ours "
    "acknowledges every task and, tracked by default, keeps its status."
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
    ("redis", "peer"): _PEER_DRAIN,
    ("redis", "cost_p32"): _REDIS_COST,
    ("amqp", "submit_one"): (
        "py-spy (`--measure submit`): 67% of a `submit_task` waits for the publisher "
        "confirm and 7% writes, as the raw publish does; asynctask's Python is under 10%."
    ),
    ("pgsql", "submit_one"): _PG_SUBMIT,
    ("pgsql", "submit_one_fresh"): _PG_SUBMIT,
    ("pgsql", "submit_one_churned"): _PG_CHURN,
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
    ("pgsql", "latency_p50_churned"): _PG_CHURN,
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
        "pointer, per task). Since (2026-12-07, later) the waiter's mark is a field of "
        "the status hash, read by the ack's `HMGET` (no `EXISTS`: 7.5 commands a task "
        "inside the script, not 8.5; Redis 123-126k instructions a task), and the "
        "worker's deferred start reads the cancel feed with one `select` (the child's "
        "run loop 187k -> 171k instructions a task, untracked 123k). The acks sent in "
        "a `START` of their own after the move (Redis answers the move first: 104 -> "
        "43 us server time) lost 6 of 6 same-run rounds on loaded cores, and were left "
        "out. What is left: one key per task (no pointer, so one `PEXPIRE`; a change "
        "of the key layout that old in-flight tasks would need migrating for). "
        "`python -m bench.status_cost --only redis`: prefetch 1 0.51x (main 0.38x), "
        "prefetch 4 0.57x (main 0.25x): at prefetch 1 each task is the first of its "
        "move, marked running in the move's script (about 245k instructions a task "
        "against 37k for the untracked plain pipeline)."
    ),
    ("pgsql", "tracking"): (
        "Not profiled on its own. What a tracked task costs here (2026-12-07): its status "
        "row, written by the submit's statement (a second row and its index entries), and "
        "its `succeeded`, written by the RESERVE that acknowledges it (not a HOT update: "
        "`date_forget` is in the index `asynctask_status_forget`); `running` is written "
        "only for a prefetched task still running 50 ms after its start (`SYNC_WITHIN`). "
        "An untracked queue's submits write no status row and its RESERVE updates none. "
        "The status step alone on a quiet machine (`python -m bench --only "
        "localmem,filesys,pgsql,redis --steps status`, commit 8496c70, load 1.1-1.2, "
        "prefetch 16): 12,882/s tracked against 16,739/s (0.77x)."
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
        "`asynctask_state`). Until 2026-12-07 core's generic path waited for two round "
        "trips to it a task (`started` before `process()`, `settled` after); now the "
        "Redis store gives each consumer a status feed (`StateStore.feed`: the queue's "
        "cancels on pub/sub, and those made before, kept in `P:Q:cancelled`), so the "
        "running mark and the outcome go out unanswered, in order, on the feed's own "
        "connection: no waited round trip a task once the feed is open. CPU a task "
        "(in-process drain of 3,000 at prefetch 4, state in a private Redis, median of 3 "
        "alternating rounds, two runs): the worker process 55-57 us untracked, 202-223 us "
        "with the waited path, 121-138 us with the feed; Redis 143-171 -> 59-90 us; the "
        "relay 163-230 us either way. The wall-clock ratio then depends on the spare "
        "CPU: `--steps status` runs alternating the old and new path on this host at "
        "load 6-15 gave the feed "
        "0.49-0.93x (median 0.60x; 3 of 7 runs >= 0.7x; an 8th, 0.15x, while the shared "
        "Redis stalled) and the waited path 0.34-0.81x (median 0.56x, 6 runs), the "
        "tracked drain itself 1,069-2,002/s against 898-1,433/s; at load 1.4-3.4 "
        "(2026-12-07 08:00, commit 3b6636c, ABBA) the feed 0.78x and 0.89x, the waited "
        "path 0.50x and 0.45x; "
        "what is left is the CPU of the two status scripts in Redis and of the worker's "
        "two writes a task, on 2 cores shared by the broker, Redis, the relay and the "
        "worker. With pgsql as the store (no feed) every start and outcome still waits "
        "(0.13x in `python -m bench.status_cost --state pgsql`, unchanged)."
    ),
}
