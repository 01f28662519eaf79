"""``python -m chaos.quorum`` (part of ``make chaos``): quorum queues on a 3-node cluster
while the node leading the queue stops, again and again.

A cluster of the run's own (``chaos.cluster``) gets ``--tasks`` tasks on one quorum queue
(``?queue_type=quorum``, a URI that lists the three nodes); ``asynctask workers`` drains
it with 4 children while, ``--stops`` times, the node that leads the queue at that moment
is stopped (``rabbitmqctl stop``), the drain goes on without it, and the node is started
again before the next stop. The ledger (``chaos.ledger``), outside the broker, tells what
ran: every task must be done (0 lost); a task in flight on a stopped node's connections
may run twice. The result replaces the quorum section of docs/reliability.md.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from asynctask.testing import unique_queue
from asynctask.testing.contract import open_transport
from chaos import ledger
from chaos.cluster import RabbitCluster, available
from chaos.supervisor import ROOT, Workers

TITLE = "## Quorum queues on a 3-node cluster"


@dataclass
class Outcome:
    """What one run saw."""

    tasks: int
    stops: int
    done: int = 0
    lost: int = 0
    duplicates: int = 0
    #: per stop: seconds from the stop until the next task was done
    pauses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    leaders: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """The promise: nothing lost."""
        return self.lost == 0


def run(tasks: int, stops: int, scratch: Path, say: Callable[[str], None] = print) -> Outcome:
    """One run; see the module docstring."""
    outcome = Outcome(tasks, stops)
    rng = random.Random(19)
    began = time.monotonic()
    with RabbitCluster() as cluster:
        say(f"  {len(cluster.nodes)} nodes up in {time.monotonic() - began:.0f} s")
        uri = f"{cluster.uri()}?queue_type=quorum&heartbeat=2&retry_timeout=120"
        queue = unique_queue("quorum")
        path = scratch / "quorum-ledger.jsonl"
        seen = ledger.Follower(str(path))
        workers = Workers(uri, queue, path, scratch / "quorum-workers.log")
        began = time.monotonic()
        # Fed in one part per stop and one more: each stop strikes a drain under way,
        # however long the stopped node takes to start again.
        parts = [
            range(p * tasks // (stops + 1), (p + 1) * tasks // (stops + 1))
            for p in range(stops + 1)
        ]
        try:
            with open_transport(uri) as transport:
                for stop, part in enumerate(parts, 1):
                    for start in range(part.start, part.stop, 500):
                        batch = range(start, min(part.stop, start + 500))
                        payloads = [{"n": n, "ms": rng.randint(50, 150)} for n in batch]
                        transport.submit_tasks(queue, payloads)
                    if stop > stops:
                        break
                    goal = part.start + len(part) // 3
                    _wait(_reached(seen, goal), 600, f"{goal} tasks done")
                    leader = cluster.leader(queue)
                    outcome.leaders.append(leader.name.partition("@")[0])
                    before = len(seen.poll())
                    stopped = time.monotonic()
                    cluster.stop_node(leader)
                    # the drain goes on (or the part was drained before the stop took)
                    _wait(_reached(seen, min(before + 1, part.stop)), 600, "the drain to go on")
                    pause = time.monotonic() - stopped
                    outcome.pauses.append(pause if before < part.stop else float("nan"))
                    say(f"  stop {stop}: {leader.name} stopped; drain went on after {pause:.1f} s")
                    cluster.start_node(leader)
                    cluster.await_node(leader)
            _wait(_reached(seen, tasks), 900, "every task done")
        except TimeoutError as exc:
            say(f"  {exc}")
        finally:
            outcome.seconds = time.monotonic() - began
            workers.stop()
        entries = [e for e in ledger.read(str(path)) if e.event == "done"]
        numbers = {e.n for e in entries}
        outcome.done = len(numbers)
        outcome.lost = tasks - len(numbers & set(range(tasks)))
        outcome.duplicates = len(entries) - len(numbers)
    return outcome


def _reached(seen: ledger.Follower, count: int) -> Callable[[], bool]:
    return lambda: len(seen.poll()) >= count


def _wait(ready: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def section(outcome: Outcome, command: str) -> str:
    """The quorum section of docs/reliability.md."""
    pauses = ", ".join("-" if p != p else f"{p:.1f}" for p in outcome.pauses) or "-"
    verdict = "0 lost." if outcome.ok else f"**{outcome.lost} LOST.**"
    leaders = ", ".join(outcome.leaders)
    parts = outcome.stops + 1
    row = (
        f"| {outcome.tasks:,} | {outcome.done:,} | {outcome.lost} | {outcome.duplicates} "
        f"| {outcome.stops} ({leaders}) | {pauses} | {outcome.seconds:.0f} |"
    )
    return f"""{TITLE}

Written by `{command}` on {time.strftime("%Y-%m-%d %H:%M %Z")}. {verdict}

A cluster of three RabbitMQ nodes of the run's own on loopback (`chaos/cluster.py`:
distinct node names and ports, one Erlang cookie, no plugin) holds one quorum queue
(`?queue_type=quorum`; the URI lists the three nodes, `amqp://...@h1:p1,h2:p2,h3:p3/`).
`asynctask workers` drains {outcome.tasks:,} tasks (50-150 ms each) with 4 children
(fed in {parts} parts, one before each stop) while the node leading the queue is
stopped (`rabbitmqctl stop`) a third of the way through a part, {outcome.stops} times,
and started again before the next.

| tasks | done | lost | run twice | leader stops | drain resumed after (s) | seconds |
|---|---|---|---|---|---|---|
{row}

"Run twice" are tasks in flight on the stopped node's connections: the broker gives them
back, and the new delivery counts an attempt (at-least-once). "Drain resumed after" is
the time from the stop to the next task done: the quorum queue elects a new leader, and
the workers reconnect to the next node the URI lists.
"""


def replace_section(document: str, new: str) -> str:
    """``document`` with its quorum section replaced by ``new`` (or added at the end of
    the results, before the transports' details)."""
    start = document.find(TITLE)
    if start < 0:
        anchor = document.find("## The transports as run")
        if anchor < 0:
            return document.rstrip() + "\n\n" + new
        return document[:anchor] + new + "\n" + document[anchor:]
    end = document.find("\n## ", start + len(TITLE))
    return document[:start] + new + ("" if end < 0 else document[end:])


def main(argv: list[str]) -> int:
    """Run, print, and update docs/reliability.md; 0 when nothing was lost."""
    parser = argparse.ArgumentParser(prog="python -m chaos.quorum", description=__doc__)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--stops", type=int, default=3)
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", metavar="DIR")
    args = parser.parse_args(argv)
    why = available()
    if why is not None:
        print(f"quorum: skipped: {why}", file=sys.stderr)
        return 0
    scratch = Path(tempfile.mkdtemp(prefix="asynctask-quorum-"))
    print("quorum:", file=sys.stderr)
    outcome = run(args.tasks, args.stops, scratch, lambda line: print(line, file=sys.stderr))
    command = "python -m chaos.quorum" + ("" if not argv else " " + " ".join(argv))
    text = section(outcome, command)
    print(text)
    page = args.docs / "reliability.md"
    old = page.read_text(encoding="utf-8") if page.exists() else "# Reliability\n"
    page.write_text(replace_section(old, text), encoding="utf-8")
    if outcome.ok:
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        print(f"kept the ledger and worker log in {scratch}", file=sys.stderr)
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
