"""What a run shows: the table on the terminal, docs/reliability.md, and JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chaos.badinput import Outcome
from chaos.scenarios import TITLES, Plan, Result

HEADER = [
    "transport",
    "scenario",
    "tasks",
    "faults",
    "lost",
    "duplicates (bound)",
    "poison in failed store",
    "recovery",
    "redelivery",
    "time",
    "result",
]


@dataclass
class Run:
    """One run of the suite: where, with what, and its results."""

    command: str
    date: str
    plan: Plan
    machine: dict[str, Any]
    servers: dict[str, str]
    uris: dict[str, str]
    commit: str
    seconds: float = 0.0
    results: list[Result] = field(default_factory=list)
    bad_input: list[Outcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every scenario that ran kept the promise, and every bad-input case."""
        scenarios = all(r.ok for r in self.results if r.skipped is None)
        return scenarios and all(o.ok for o in self.bad_input)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def cells(result: Result) -> list[str]:
    """One row of the table."""
    title = TITLES[result.scenario]
    if result.skipped is not None:
        return [result.transport, title, "-", "-", "-", "-", "-", "-", "-", "-", result.skipped]
    poison = "-"
    if result.poison_expected is not None:
        poison = f"{result.poison_failed} of {result.poison_expected}"
    return [
        result.transport,
        title,
        str(result.tasks),
        str(result.faults),
        str(result.lost),
        f"{result.duplicates} ({result.bound})",
        poison,
        _seconds(result.recovery),
        _seconds(result.redelivery),
        f"{result.seconds:.0f} s",
        "ok" if result.ok else "FAILED",
    ]


def table(results: list[Result]) -> str:
    """The results as a plain-text table."""
    rows = [HEADER, *(cells(r) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def problems(results: list[Result]) -> list[str]:
    """Errors and notes, one line per scenario that has any."""
    lines = []
    for r in results:
        said = [*(f"**{e}**" for e in r.errors), *r.notes]
        if said:
            lines.append(f"- {r.transport}, {TITLES[r.scenario]}: " + "; ".join(said))
    return lines


BAD_INPUT_TITLE = "## Bad input"

#: what else a local user or another program can do: (case, outcome, the test that holds it)
OTHER_CASES = (
    (
        "filesys: a symlink planted where the scheduler writes a claim",
        "the link is removed, never written through; the claim is taken",
        "test_a_claim_never_writes_through_a_planted_symlink",
    ),
    (
        "filesys: a claim's lock held by another process",
        "unchanged: the claim is refused after 1 s; no firing stalls",
        "test_a_held_claim_lock_does_not_stall_the_scheduler",
    ),
    (
        "filesys: `?mode=0660` in a setgid folder, producer and worker as two users",
        "unchanged: the folders keep the setgid bit; the worker runs the task",
        "test_a_producer_and_a_worker_as_two_users_share_a_group_folder",
    ),
    (
        "a `json.py` in the working folder of `asynctask workers`",
        "unchanged: children start with `python -P`; the folder comes last",
        "test_a_json_py_in_the_working_folder_never_runs_in_a_child",
    ),
    (
        '`{"schedule": "backup"}` written to another scheduled queue',
        "failed store: a queue runs only its own entry's command",
        "test_a_task_on_another_scheduled_queue_cannot_run_the_backup_entry",
    ),
    (
        "a command that runs past its `timeout`, or prints 20 MB",
        "failed store with a tail of its output; the log keeps a tail",
        "test_commands.py",
    ),
    (
        "32 odd and malformed URIs through every command, the logs and `ps`",
        "unchanged: no password shown anywhere",
        "test_secrets.py",
    ),
)


def _other_cases() -> str:
    rows = [["case", "outcome", "test"], ["---"] * 3]
    rows += [[case, outcome, f"`{test}`"] for case, outcome, test in OTHER_CASES]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def bad_input_table(outcomes: list[Outcome]) -> str:
    """The bad-input cases as a markdown table: one row a case, one column a transport."""
    transports = list(dict.fromkeys(o.transport for o in outcomes))
    cases = list(dict.fromkeys(o.case for o in outcomes))
    cell = {(o.case, o.transport): o.cell() for o in outcomes}
    rows = [["case", *transports], ["---"] * (len(transports) + 1)]
    rows += [[c, *(cell.get((c, t), "-") for t in transports)] for c in cases]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def bad_input_markdown(outcomes: list[Outcome], command: str, date: str) -> str:
    """The bad-input section of docs/reliability.md."""
    if not outcomes:
        return ""
    verdict = (
        "Every case kept the promise."
        if all(o.ok for o in outcomes)
        else "**Some cases did not keep the promise (FAILED cells).**"
    )
    return f"""{BAD_INPUT_TITLE}

Written by `{command}` on {date}. {verdict}

What another program or local user can write into a backend (DESIGN.md section 10),
each case by hand in the transport's documented storage format, into a fresh queue
between two good tasks; then the run loop of the worker children takes the queue until
it is empty (`chaos/badinput.py`; `tests/hostile/test_bad_input.py` asserts the same
cases). A case keeps the promise when the bad message ends in the **failed store** with
its reason, or is **refused** with a message where it was written, the worker goes on,
both neighbours run once on their first attempt (nothing fetched beside a bad message
is charged an attempt), a task with a forged attempt count runs at most
`max_retries + 1` times, and nothing a symlink points at shows anywhere. The cases run
with `asynctask_max_payload_bytes` = 65536 and, for the signing cases, a signing key.
"n/a": the storage format cannot hold that case (a filesys task name has no negative
count; the file cases are filesys's own).

{bad_input_table(outcomes)}

Beside the messages, what else a local user or another program can do, with its outcome
and the test that holds it (`tests/hostile/`, run by `make test`):

{_other_cases()}
"""


def replace_bad_input(document: str, section: str) -> str:
    """``document`` with its bad-input section replaced by ``section`` (or added)."""
    return replace_section(document, BAD_INPUT_TITLE, section)


def replace_section(document: str, title: str, section: str) -> str:
    """``document`` with the section headed ``title`` replaced by ``section`` (or added
    before "The transports as run")."""
    start = document.find(title)
    if start < 0:
        anchor = document.find("## The transports as run")
        if anchor < 0:
            return document.rstrip() + "\n\n" + section
        return document[:anchor] + section + "\n" + document[anchor:]
    end = document.find("\n## ", start + len(title))
    return document[:start] + section + ("" if end < 0 else document[end:])


MANY_HOSTS_TITLE = "## Many hosts: one cut off"


def many_hosts_markdown(run: Run) -> str:
    """The partition section of docs/reliability.md (empty without partition results)."""
    results = [r for r in run.results if r.scenario in ("partition", "limits")]
    if not results:
        return ""
    plan = run.plan
    rows = [HEADER, ["---"] * len(HEADER), *(cells(r) for r in results)]
    body = "\n".join("| " + " | ".join(row) + " |" for row in rows)
    ran = [r for r in results if r.skipped is None]
    verdict = (
        "Every run kept the promise."
        if all(r.ok for r in ran)
        else "**Some runs did not keep the promise (FAILED rows).**"
    )
    servers = ", ".join(
        f"{k.split()[0]}: {v}" for k, v in run.servers.items() if k.endswith("(partition)")
    )
    return f"""{MANY_HOSTS_TITLE}

Written by `{run.command}` on {run.date}. {verdict}

{plan.hosts} hosts drain {plan.partition_tasks:,} tasks from one backend while one of
them is cut off mid-run, then healed (`chaos/partition.py`; `make test` runs 200 tasks of
it, `tests/chaos/test_partition.py`). Each host is a set of Linux namespaces of its own
(network, hostname, PID space, `/proc`: its processes' PIDs overlap the other hosts')
running `asynctask workers` with 2 children (prefetch 1); a server of the run's own
listens in a server namespace, joined to the hosts by veth links on a bridge (never the
shared servers: `chaos/hosts.py`, `chaos/hosted.py`). Tasks sleep 150-350 ms and are
fed in {plan.batches} batches over {plan.feed_seconds:g} s. The recovery bound R is 5 s on
redis and pgsql (`recovery_seconds=5`: the 2 s of the other scenarios gives an owner's
key 1 s to live, and on this machine, loaded 6 times over its cores, live owners were
taken for dead) and 6 s on amqp (`heartbeat=2`). At 30 % of the feed, just after a child
of `host1` has started a task, `host1`'s bridge port is set down (its packets are
dropped; connections hang, nothing is refused) for twice R plus 2 s, then up again.
Expected, and checked:

- **0 lost**;
- **duplicates at most the cut host's in-flight count** (2 children x prefetch 1: the
  bound column): what it was running, or had just reserved with the reply on its way;
- **recovery**: every task the cut host was running came back (one attempt more) and
  started again, on another host (or on the cut host itself once healed); the column is
  the longest from the cut to that start, which
  must be within R (x 1.5 + 3 s on a busy machine), except on amqp: its consumer puts
  a dead worker's task at the **tail** of the queue (see its README), so behind a
  backlog it starts once the backlog has run. **redelivery**: to its completion;
- **late acknowledgements change nothing**: each task the cut host finished while cut
  off (its acknowledgement could not reach the server) came back and ran again, and
  its acknowledgements and failures sent after the heal removed nothing (0 lost, the
  queue empty at the end; the liveness contract's
  `test_a_cut_off_owners_late_settles_leave_the_new_delivery` holds the same per call).

A host's keeper cannot beat while cut off, so its owner is dead after R; when it comes
back, its keeper beats again and its children go on with new tasks. One more effect,
within the bound: a reply on its way when the link went down (a reserve the server had
done) arrives after the heal, TCP having kept the connection, and the child runs that
task although the server had meanwhile given it to another host (redis showed it: both
children's tasks ran twice).

**Global rate and cap** (`chaos/limits.py`, the same hosts and servers; `make test` runs
it in full, `tests/chaos/test_global_limits.py`): `{{"rate_max_calls": 50, "rate_period":
5, "rate_scope": "global"}}` while 3 hosts x 2 children take 130 short tasks: at most 50
start in any window (counted from the ledger over 4.75 s: a start is written a moment
after it is counted), and the run lasts the 10 s the rate says; then `"max_running": 3`
with 18 tasks of 1.5 s: never more than 3 run at once (the ledger's start-to-end
intervals, swept), 3 do, and a child of `host1` SIGKILLed while it runs a task (holding
a slot) does not leak it: 3 run at once again (the recovery column) within 4 s.
Servers: {servers}.

{body}

{chr(10).join(problems(results)) or "No errors, no notes."}
"""


def markdown(run: Run) -> str:
    """docs/reliability.md."""
    plan = run.plan
    rows = [HEADER, ["---"] * len(HEADER), *(cells(r) for r in run.results)]
    body = "\n".join("| " + " | ".join(row) + " |" for row in rows)
    machine = run.machine
    servers = ", ".join(f"{k}: {v}" for k, v in run.servers.items()) or "-"
    uris = "\n".join(f"| {name} | `{uri}` |" for name, uri in run.uris.items())
    verdict = (
        "Every scenario kept the promise."
        if run.ok
        else "**Some scenarios did not keep the promise (FAILED rows).**"
    )
    if "**no**" in figures(run):
        verdict += " **Not every figure asked for is met (see The figures asked for).**"
    return f"""# Reliability under faults

Written by `{run.command}` on {run.date}, in {run.seconds / 60:.1f} minutes. {verdict}

Each scenario runs {plan.tasks:,} tasks (each sleeps a random 0-20 ms, then records its
number, attempt, pid and time in a ledger file outside the transport) through
`asynctask workers` with 4 children (prefetch 1), fed in {plan.batches} batches over
{plan.feed_seconds:g} s, while a fault strikes:

Every server is one of the suite's own (`chaos/private_*.py`), started in a temp folder on a
free loopback port and removed at the end: a PostgreSQL cluster (`initdb`, `pg_ctl`), a
`redis-server` (`appendonly yes`, `appendfsync always`), a RabbitMQ node with its own
name, ports, mnesia and cookie. The shared servers on the standard ports are never
touched.

1. **worker kills**: SIGKILL of a random child every {plan.kill_every:g} s, {plan.kills} times;
2. **server restart** mid-run: PostgreSQL `pg_ctl restart -m fast`; Redis `SHUTDOWN` and
   started again on the same files; RabbitMQ `rabbitmqctl stop_app` / `start_app`
   (filesys has no server);
3. **connection kills**, {plan.connection_kills} times: `pg_terminate_backend` of every
   connection of the suite, `CLIENT KILL TYPE normal`, `rabbitmqctl close_all_connections`;
4. **a worker's connection closed** (amqp only), {plan.connection_kills} times: an operator's
   `rabbitmqctl close_connection` on one worker's connection, found by its client-provided
   name (`asynctask consumer <queue> (pid N)`); the broker hands that
   connection's unacknowledged task to another consumer at once, so at most the task in
   flight (prefetch 1) repeats per close, as with a worker kill;
5. **supervisor stop**: SIGTERM to `asynctask workers` mid-run, then a new one finishes;
6. **poison and bad input**: {plan.poison} tasks that always raise, 5 undecodable messages
   written into the backend by hand (its documented storage format), a 1 MB payload, a
   payload nested 400 deep (and one nested 600 deep, which submit must refuse).

The liveness scenarios (`chaos.liveness`) run a few tasks each, on the same short
recovery bound R (`features.recovery_seconds`), and expect 0 duplicates:

7. **GIL hog**: two tasks hold the GIL for 3 R in one C call (no thread of their child
   runs) while the other children wait, twenty short tasks beside them;
8. **connection kills, long tasks**: three tasks of 3 R, a fourth child waiting, every
   connection of the suite dropped three times meanwhile (on AMQP the broker hands a
   closed connection's tasks to others: the bound is the tasks in flight per drop);
9. **NOTIFY flood** (pgsql): 50,000 NOTIFYs on the channel of two GIL-holding tasks;
10. **SIGTERM to the process group** (`kill -TERM -PGID`, systemd's
    `KillMode=control-group`) while four 3 s tasks run: exit 0, no task cut short, then a
    new supervisor finishes the queue;
11. **child-killing task**: two tasks that SIGKILL their child among 40 innocent ones
    (prefetch 4): the two reach the failed store, every innocent one runs once.

Then it waits (at most {plan.drain_timeout:g} s) until every task is completed and the
queue is empty, and counts from the ledger:

- **lost**: tasks never completed. Must be 0.
- **duplicates (bound)**: completions beyond a task's first. Each must follow a fault:
  a killed child's task it had completed but not yet acknowledged (at most its prefetch,
  1, per kill), or a task in flight when a server, a connection or the supervisor went
  down (at most 4 children x prefetch per such fault). The bound is that sum.
- **poison in failed store**: poison tasks and undecodable messages found in the queue's
  failed store after the run. Must be all.
- **recovery**: the longest, over the faults, from a fault's start to the first completion
  of a task that began after the fault was over (a server restart includes its downtime).
- **redelivery** (kills): the longest from a kill to the completion, by another child, of
  the task the killed child was running (the transport's recovery bound at work).

The supervisor starts a child killed by a signal again after 0.2 s (a child that keeps
exiting on its own within 30 s of its start backs off, doubling, up to 30 s), and a new
child needs about half a second to start, so kills every 0.5 s leave fewer than 4
children running. The redelivery time is the transport's recovery bound at work.

## Results

{body}

{chr(10).join(problems(run.results)) or "No errors, no notes."}

{figures(run)}

{bad_input_markdown(run.bad_input, run.command, run.date)}
{many_hosts_markdown(run)}
## The transports as run

Short recovery options, so that a killed worker's task comes back within about 2 s:

| transport | URI |
|---|---|
{uris}

## Machine

{machine.get("cpu")}, {machine.get("cores")} cores, {machine.get("memory")} memory,
{machine.get("os")}, Python {machine.get("python")}, {machine.get("filesystem")};
load averages (1/5/15 min) {machine.get("load")} before, {machine.get("load_after", "?")} after.
Servers: {servers}. Commit {run.commit}.
"""


#: the liveness scenarios whose duplicates must be 0 while the workers live (issue 12)
LIVE_WORKERS = ("gil", "longconn", "flood")


def broker_redelivers(result: Result) -> bool:
    """AMQP's connection kills during long tasks: the one case issue 12 lets repeat.

    RabbitMQ hands a closed connection's unacknowledged messages to other consumers at
    once, whoever closed it, so there a drop counts as a fault: at most the tasks in flight
    repeat per drop, the bound the scenario records (``Result.bound``).
    """
    return result.transport == "amqp" and result.scenario == "longconn"


def live_excess(result: Result) -> str | None:
    """What a scenario run while the workers live did beyond what it may, or None.

    Every duplicate counts, except on AMQP under connection kills, where only those
    beyond the tasks in flight per drop do.
    """
    title = f"{result.transport} {TITLES[result.scenario]}"
    if broker_redelivers(result):
        if result.duplicates <= result.bound:
            return None
        return f"{title}: {result.duplicates}, above its bound of {result.bound}"
    return f"{title}: {result.duplicates}" if result.duplicates else None


def figures(run: Run) -> str:
    """The figures issue 12 asks of the run, each checked: 0 lost anywhere; 0 duplicates
    while the workers live (on AMQP under connection kills, at most the tasks in flight per
    drop); the group SIGTERM cuts no task short; beside a child-killing task, every
    innocent one succeeds."""
    ran = [r for r in run.results if r.skipped is None]
    lines = ["## The figures asked for", ""]

    def check(what: str, results: list[Result], good: bool, detail: str = "") -> None:
        if results:
            mark = "yes" if good else "**no**"
            lines.append(f"- {what}: {mark}{detail}")

    check("0 tasks lost, every scenario", ran, all(r.lost == 0 for r in ran))
    live = [r for r in ran if r.scenario in LIVE_WORKERS]
    over = [said for said in map(live_excess, live) if said]
    within = [f"amqp: {r.duplicates} of at most {r.bound}" for r in live if broker_redelivers(r)]
    check(
        "0 duplicates while the workers live (GIL hog, long tasks under connection kills, "
        "NOTIFY flood; on AMQP under connection kills at most the tasks in flight per drop, "
        "as the broker hands a closed connection's tasks to others)",
        live,
        not over,
        f" ({'; '.join(over or within)})" if over or within else "",
    )
    group = [r for r in ran if r.scenario == "group"]
    check(
        "SIGTERM to the process group: exit 0, 0 tasks cut short",
        group,
        all(r.ok and r.duplicates == 0 for r in group),
    )
    deadly = [r for r in ran if r.scenario == "deadly"]
    check(
        "child-killing tasks: every innocent task succeeds once, the deadly ones fail",
        deadly,
        all(r.ok and r.duplicates == 0 for r in deadly),
    )
    load = run.machine.get("load_after")
    lines += [
        "",
        f"The machine is shared (2 cores, several engineers' test runs): load averages "
        f"{run.machine.get('load')} before the run and {load} after. Times and recovery "
        "figures are those of a loaded machine; the counts do not depend on it.",
    ]
    return "\n".join(lines)


def write_json(run: Run, path: Path) -> None:
    """The run as JSON, for the CI test and for scripts."""
    data = {
        "command": run.command,
        "date": run.date,
        "seconds": run.seconds,
        "plan": asdict(run.plan),
        "machine": run.machine,
        "servers": run.servers,
        "commit": run.commit,
        "ok": run.ok,
        "results": [{**asdict(r), "ok": r.ok} for r in run.results],
        "bad_input": [{**asdict(o), "ok": o.ok} for o in run.bad_input],
    }
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
