"""``python -m chaos.failover`` (part of ``make chaos``): a Redis master killed mid-drain,
on a Cluster and under Sentinel, with and without ``wait_replicas``.

For each topology (``cluster``: 3 masters and 3 replicas, the queue's master killed;
``sentinel``: a master, a replica and a Sentinel, the master killed) and each mode
(``?wait_replicas=1`` or not), on servers of the run's own (``chaos.redis_ha``):
``asynctask workers`` (4 children, ``chaos.workers``) drains a queue that a producer
thread keeps feeding in small batches; half way through the feed, the master holding the
queue is SIGKILLed, as it is and (``--lag``) with its replica cut off for 0.5 s before
the kill (stopped, its link closed by the master), so that it lacks what the master
confirmed meanwhile, as after a network cut between the two. Once its replica is
promoted, the killed server is started again (as an operator or systemd would), and
comes back as the new master's replica. The producer
goes on throughout: a submit that returned is *confirmed*; one that raised is counted
apart (``ReplicationTimeout`` while the new master has no replica yet, or the outage
outlasting ``retry_timeout``). The ledger (``chaos.ledger``), outside Redis, tells what
ran: a confirmed task never done is *lost*; a task done twice is a *duplicate*
(at least once: an ack the failover undid). The table replaces the failover section of
docs/reliability.md.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from asynctask.errors import TransportError
from asynctask.testing import unique_queue
from asynctask.testing.contract import open_transport
from chaos import ledger
from chaos.private_redis import redis_command
from chaos.redis_ha import (
    RedisCluster,
    SentinelGroup,
    info,
    paused,
    private_cluster,
    private_sentinel,
)
from chaos.report import replace_section
from chaos.supervisor import ROOT, Workers

TITLE = "## Redis failover: a master killed mid-drain"
TOPOLOGIES = ("cluster", "sentinel")
#: the URI options of every run (short recovery, a long retry through the failover)
BASE_OPTIONS = {"recovery_seconds": "3", "retry_timeout": "60"}
WAIT_OPTIONS = {"wait_replicas": "1", "wait_timeout_ms": "1000"}
BATCH = 10
#: each task's sleep: 4 children take at most 200/s, less than the feed, so a backlog
#: waits in the queue at the kill (tasks a lagging replica lacks are still to run)
TASK_MS = 20
HEADER = (
    "| topology | replica lag at the kill (s) | WAIT | tasks | submits confirmed "
    "| raised ReplicationTimeout | raised otherwise | done | lost | run twice "
    "| drain resumed after (s) "
    "| killed server back as replica after (s) | seconds |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


@dataclass
class Outcome:
    """What one run saw."""

    topology: str
    wait: bool
    tasks: int
    #: seconds the replica was stopped just before the kill (0: it kept up)
    lag: float = 0.0
    confirmed: int = 0
    #: submits that raised ReplicationTimeout (on the master, not confirmed)
    unconfirmed: int = 0
    #: submits that raised another error (not stored, as far as the producer knows)
    failed: int = 0
    done: int = 0
    lost: int = 0
    duplicates: int = 0
    #: seconds from the kill until tasks taken after it were done (the failover included)
    pause: float = float("nan")
    #: seconds from the kill until the killed server answered again, as a replica
    back: float = float("nan")
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """The promise: nothing confirmed is lost (asked of the runs with WAIT only:
        without it a loss is the trade-off this measures, reported as it is)."""
        return self.lost == 0 or not self.wait


Kill = Callable[[str, float], int]


@contextlib.contextmanager
def _topology(name: str) -> Iterator[tuple[str, Kill, Callable[[int], None]]]:
    """(base URI, kill(key, lag) -> killed port, revive(port) once the failover is done)."""
    if name == "cluster":
        with private_cluster() as cluster:
            yield (
                cluster.uri,
                lambda key, lag: _kill_cluster_master(cluster, key, lag),
                cluster.revive,
            )
    else:
        with private_sentinel() as group:
            yield group.uri(), lambda key, lag: _kill_sentinel_master(group, lag), group.revive


def _kill(master: int, replica: int, lag: float, kill: Callable[[int], object]) -> None:
    """SIGKILL ``master``; with ``lag``, its replica cut off for the ``lag`` seconds before:
    stopped (SIGSTOP, so it cannot reconnect) and its link closed by the master (``CLIENT
    KILL TYPE replica``: what was sent before is in the replica's socket and still read,
    nothing after is sent), continued after the kill. What the master confirmed
    meanwhile, the replica lacks, as after a network cut between the two."""
    if lag <= 0:
        kill(master)
        return
    with paused(replica):
        redis_command(master, None, "CLIENT", "KILL", "TYPE", "replica")
        time.sleep(lag)
        kill(master)


def _kill_cluster_master(cluster: RedisCluster, key: str, lag: float) -> int:
    master = cluster.master_of(key)
    replica = cluster.replica_of(master)
    _kill(master, replica, lag, cluster.kill)
    _wait(lambda: _role(replica) == "master", 60, f"replica {replica} promoted")
    return master


def _kill_sentinel_master(group: SentinelGroup, lag: float) -> int:
    master = group.master_port
    _kill(master, group.replica_port, lag, lambda port: group.kill_master())
    _wait(lambda: group.master() not in (None, master), 60, "Sentinel to promote the replica")
    return master


def _role(port: int) -> str:
    try:
        return info(port, "replication").get("role", "")
    except OSError:
        return ""


def run(
    topology: str,
    wait: bool,
    tasks: int,
    scratch: Path,
    say: Callable[[str], None] = print,
    feed_seconds: float = 8.0,
    lag: float = 0.0,
) -> Outcome:
    """One run; see the module docstring."""
    outcome = Outcome(topology, wait, tasks, lag)
    began = time.monotonic()
    with _topology(topology) as (base, kill, revive):
        options = {**BASE_OPTIONS, **(WAIT_OPTIONS if wait else {})}
        uri = base + "?" + "&".join(f"{k}={v}" for k, v in options.items())
        queue = unique_queue("failover")
        tag = f"{{{queue}}}" if topology == "cluster" else queue
        mode = f"{'wait' if wait else 'async'}-lag{lag:g}"
        path = scratch / f"failover-{topology}-{mode}.jsonl"
        seen = ledger.Follower(str(path))
        log = path.with_suffix(".log")
        workers = Workers(uri, queue, path, log)
        confirmed: set[int] = set()
        stop = threading.Event()

        def feed() -> None:
            gap = feed_seconds * BATCH / tasks
            with open_transport(uri) as producer:
                for start in range(0, tasks, BATCH):
                    if stop.is_set():
                        return
                    numbers = range(start, min(tasks, start + BATCH))
                    payloads = [{"n": n, "ms": TASK_MS} for n in numbers]
                    try:
                        producer.submit_tasks(queue, payloads)
                        confirmed.update(numbers)
                    except TransportError as exc:
                        if type(exc).__name__ == "ReplicationTimeout":
                            outcome.unconfirmed += len(numbers)
                        else:
                            outcome.failed += len(numbers)
                            outcome.notes.append(f"submit: {exc}"[:200])
                    time.sleep(gap)

        producer = threading.Thread(target=feed, name="failover-producer", daemon=True)
        try:
            workers.wait_ready()
            producer.start()
            # mid-feed and mid-drain: submits and acks are in flight when the master dies
            half = tasks // 2
            _wait(lambda: len(confirmed) >= half and bool(seen.poll()), 300, f"{half} submits")
            before = len(seen.poll())
            killed_at = time.monotonic()
            port = kill(f"asynctask_{tag}", lag)
            say(
                f"  {topology}, wait={wait}: master {port} killed after {len(confirmed)} "
                f"submits, {before} tasks done"
            )
            # more than the children can have held at the kill: tasks taken afterwards
            going = before + 2 * workers.concurrency + 1
            _wait(lambda: len(seen.poll()) >= going, 120, "the drain to go on")
            outcome.pause = time.monotonic() - killed_at
            revive(port)
            _wait(lambda: _role(port) == "slave", 60, f"{port} back as a replica")
            outcome.back = time.monotonic() - killed_at
            producer.join(300)
            _settled(seen, confirmed)
        except TimeoutError as exc:
            say(f"  {exc}")
            outcome.notes.append(str(exc))
        finally:
            stop.set()
            if producer.is_alive():
                producer.join(30)
            outcome.seconds = time.monotonic() - began
            workers.stop()
        entries = [e for e in ledger.read(str(path)) if e.event == "done"]
        numbers = {e.n for e in entries}
        outcome.confirmed = len(confirmed)
        outcome.done = len(numbers)
        outcome.lost = len(confirmed - numbers)
        outcome.duplicates = len(entries) - len(numbers)
    return outcome


def _settled(seen: ledger.Follower, confirmed: set[int], quiet: float = 20.0) -> None:
    """Wait until every confirmed task is done, or nothing more is done for ``quiet``
    seconds (the rest is lost: recovery brings a dead consumer's task back within
    ``recovery_seconds``, 3 s here), within 300 s."""
    deadline = time.monotonic() + 300
    count, since = -1, time.monotonic()
    while not confirmed <= seen.poll():
        now = time.monotonic()
        if len(seen.completed) != count:
            count, since = len(seen.completed), now
        if now - since > quiet or now > deadline:
            return
        time.sleep(0.1)


def _wait(ready: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def section(outcomes: list[Outcome], command: str) -> str:
    """The failover section of docs/reliability.md."""
    rows = []
    for o in outcomes:
        rows.append(
            f"| {o.topology} | {_s(o.lag) if o.lag else 0} "
            f"| {'wait_replicas=1' if o.wait else 'none'} | {o.tasks:,} "
            f"| {o.confirmed:,} | {o.unconfirmed:,} | {o.failed:,} | {o.done:,} "
            f"| {'**' + str(o.lost) + '**' if o.lost else 0} | {o.duplicates} "
            f"| {_s(o.pause)} | {_s(o.back)} | {o.seconds:.0f} |"
        )
    lost = [
        f"{o.lost} on {o.topology} ({'with' if o.wait else 'without'} WAIT, lag {o.lag:g} s)"
        for o in outcomes
        if o.lost
    ]
    verdict = "Nothing confirmed was lost." if not lost else "Lost: " + ", ".join(lost) + "."
    notes = "".join(f"\n- {o.topology}, wait={o.wait}: {n}" for o in outcomes for n in o.notes)
    table = "\n".join(rows)
    return f"""{TITLE}

Written by `{command}` on {time.strftime("%Y-%m-%d %H:%M %Z")}. {verdict}

On servers of the run's own (`chaos/redis_ha.py`, loopback, no persistence): a Redis
Cluster of 3 masters and 3 replicas (`redis+cluster://`), and a master, a replica and one
Sentinel (`redis+sentinel://`). `asynctask workers` (4 children, {TASK_MS} ms tasks) drains a
queue that a producer feeds in batches of {BATCH} as it goes; half way through the feed,
the master holding the queue is SIGKILLed: as it is (the replica keeps up), and with its
replica cut off for the "lag" before the kill (stopped with SIGSTOP, its link closed by
the master with `CLIENT KILL TYPE replica`, continued after the kill): what the master
confirmed meanwhile, the replica lacks, as after a network cut between the two. Once the
replica is promoted the killed server is started again and rejoins as the replica. The
ledger, outside Redis, counts what ran.
URI options: `{"&".join(f"{k}={v}" for k, v in BASE_OPTIONS.items())}`, and with WAIT
`{"&".join(f"{k}={v}" for k, v in WAIT_OPTIONS.items())}`.

{HEADER}
{table}

"Lost" counts confirmed submits (the call returned) whose task never ran. Without WAIT a
submit is confirmed once the master has it: a master killed before its replica copied it
takes it along. With `wait_replicas=1` a submit returns once the replica holds it; while
the promoted master has no replica yet, submits raise `ReplicationTimeout` (the task is on
that master, and runs: "done" may exceed "confirmed") and every ack waits
`wait_timeout_ms` (logged), which is the slower drain until the killed server is back.
"Run twice" are acks the failover undid (at least once).{notes}
"""


def _s(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds:.1f}"


def main(argv: list[str]) -> int:
    """Run every topology with and without WAIT, print, update docs/reliability.md;
    0 when the runs with WAIT lost nothing."""
    parser = argparse.ArgumentParser(prog="python -m chaos.failover", description=__doc__)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds of feeding")
    parser.add_argument(
        "--lag", type=float, default=0.5, help="seconds the replica is stopped before the kill"
    )
    parser.add_argument("--only", default=",".join(TOPOLOGIES), help="cluster,sentinel")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", metavar="DIR")
    args = parser.parse_args(argv)
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        print("failover: skipped: redis-server and redis-cli are needed", file=sys.stderr)
        return 0
    scratch = Path(tempfile.mkdtemp(prefix="asynctask-failover-"))
    print("failover:", file=sys.stderr)
    outcomes = []
    for topology in (t.strip() for t in args.only.split(",")):
        for lag, wait in itertools.product((0.0, args.lag), (False, True)):
            outcome = run(
                topology, wait, args.tasks, scratch,
                lambda line: print(line, file=sys.stderr), args.seconds, lag,
            )  # fmt: skip
            print(
                f"  {topology}, lag {lag:g} s, wait={wait}: confirmed {outcome.confirmed}, lost "
                f"{outcome.lost}, run twice {outcome.duplicates}, {outcome.seconds:.0f} s",
                file=sys.stderr,
            )
            outcomes.append(outcome)
    command = "python -m chaos.failover" + ("" if not argv else " " + " ".join(argv))
    text = section(outcomes, command)
    print(text)
    page = args.docs / "reliability.md"
    old = page.read_text(encoding="utf-8") if page.exists() else "# Reliability\n"
    page.write_text(replace_section(old, TITLE, text), encoding="utf-8")
    ok = all(o.ok for o in outcomes)
    if ok:
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        print(f"kept the ledgers and worker logs in {scratch}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
