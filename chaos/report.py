"""What a run shows: the table on the terminal, docs/reliability.md, and JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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

    @property
    def ok(self) -> bool:
        """Every scenario that ran kept the promise."""
        return all(r.ok for r in self.results if r.skipped is None)


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
    return f"""# Reliability under faults

Written by `{run.command}` on {run.date}, in {run.seconds / 60:.1f} minutes. {verdict}

Each scenario runs {plan.tasks:,} tasks (each sleeps a random 0-20 ms, then records its
number, attempt, pid and time in a ledger file outside the transport) through
`asynctask workers` with 4 children (prefetch 1), fed in {plan.batches} batches over
{plan.feed_seconds:g} s, while a fault strikes:

1. **worker kills**: SIGKILL of a random child every {plan.kill_every:g} s, {plan.kills} times;
2. **server restart** mid-run: PostgreSQL `pg_ctlcluster ... restart`; a Redis server of
   the suite's own (`appendonly yes`, `appendfsync always`) `SHUTDOWN` and started again
   on the same files; RabbitMQ `rabbitmqctl stop_app` / `start_app` (filesys has no server);
3. **connection kills**, {plan.connection_kills} times: `pg_terminate_backend` of every
   connection of the suite, `CLIENT KILL TYPE normal`, `rabbitmqctl close_all_connections`;
4. **supervisor stop**: SIGTERM to `asynctask workers` mid-run, then a new one finishes;
5. **poison and bad input**: {plan.poison} tasks that always raise, 5 undecodable messages
   written into the backend by hand (its documented storage format), a 1 MB payload, a
   payload nested 400 deep (and one nested 600 deep, which submit must refuse).

The liveness scenarios (`chaos.liveness`) run a few tasks each, on the same short
recovery bound R (`features.recovery_seconds`), and expect 0 duplicates:

6. **GIL hog**: two tasks hold the GIL for 3 R in one C call (no thread of their child
   runs) while the other children wait, twenty short tasks beside them;
7. **connection kills, long tasks**: three tasks of 3 R, a fourth child waiting, every
   connection of the suite dropped three times meanwhile (on AMQP the broker hands a
   closed connection's tasks to others: the bound is the tasks in flight per drop);
8. **NOTIFY flood** (pgsql): 50,000 NOTIFYs on the channel of two GIL-holding tasks;
9. **SIGTERM to the process group** (`kill -TERM -PGID`, systemd's
   `KillMode=control-group`) while four 3 s tasks run: exit 0, no task cut short, then a
   new supervisor finishes the queue;
10. **child-killing task**: two tasks that SIGKILL their child among 40 innocent ones
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
    }
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
