"""The partition scenario: many hosts drain one queue while one is cut off, then healed.

Hosts are Linux namespaces (``chaos.hosts``), each running ``asynctask workers`` with
``HOST_CHILDREN`` children; the server is the scenario's own, inside the server namespace
(``chaos.hosted``), on the backend's short recovery bound ``R``
(``features.recovery_seconds``). The scenario feeds its tasks over ``Plan.feed_seconds``;
at 30 % of it, ``host1``'s link goes down for ``2 R + 2`` s, then up again. It expects:

* **0 lost**: every task completed;
* **duplicates at most the cut host's in-flight count** (its children times their
  prefetch, 1): only what it held when it was cut off runs twice;
* **its in-flight tasks run elsewhere within the bound**: the time from the cut to the
  start, on another host, of each task it was running (the "recovery" column, the
  largest), at most ``R`` plus a margin (``SLACK``);
* **its late acknowledgements change nothing**: a task it finished while cut off (its
  acknowledgement could not reach the server) started again on another host, and its
  acknowledgement sent after the heal removed nothing (0 lost, queue empty at the end);
* the hosts' children share PIDs (each host has a PID space of its own): the count of PIDs
  seen on more than one host is noted, proof that the ledger and the transports keep
  processes apart by host.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections import defaultdict
from pathlib import Path

from asynctask import Transport, get_transport
from chaos import hosts, ledger
from chaos.hosted import hosted_uri, hosts_with_server
from chaos.private import PrivateServer
from chaos.scenarios import Plan, Result, Say
from chaos.supervisor import Workers

SCENARIO = "partition"
TRANSPORTS = ("redis", "pgsql", "amqp")
#: children of ``asynctask workers`` on each host
HOST_CHILDREN = 2
#: seconds allowed past the recovery bound for a cut-off host's task to start elsewhere
#: (the rival's next check; the server, the rivals and this process on a busy machine:
#: CI shares 2 cores), and the share of the bound added to it
SLACK = 3.0
SLACK_SHARE = 0.5
#: seconds since a start on the host to be cut within which the cut is made (its task
#: runs 150 ms at least: setting the link down takes a few ms to a hundred)
FRESH = 0.06
#: transports that put a dead worker's task back at the tail of its queue (the amqp
#: README: it "waits its turn, like a retry"): behind a backlog it starts only once the
#: backlog has run, so the time to its start is not held to the bound
TAIL_REQUEUE = frozenset({"amqp"})


def run_partition(
    name: str, plan: Plan, scratch: Path, say: Say, servers: dict[str, str] | None = None
) -> Result:
    """Run the partition scenario on transport ``name`` with a server of its own (its
    version noted in ``servers``)."""
    result = Result(name, SCENARIO)
    if name not in TRANSPORTS:
        result.skipped = "redis, pgsql and amqp only (filesys is one host)"
        return result
    reason = hosts.unavailable()
    if reason is not None:
        result.skipped = f"no namespaces: {reason}"
        return result
    folder = scratch / name / SCENARIO
    folder.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    with hosts_with_server(name, plan.hosts) as (network, server):
        version = server.version()
        if servers is not None:
            servers[f"{name} (partition)"] = version
        say(f"    {version} at {network.server_address}, {plan.hosts} hosts")
        _Partition(name, server, network, plan, folder, say, result).run()
    result.seconds = time.monotonic() - began
    return result


class _Partition:
    """The state of one partition run."""

    def __init__(
        self,
        name: str,
        server: PrivateServer,
        network: hosts.Network,
        plan: Plan,
        folder: Path,
        say: Say,
        result: Result,
    ) -> None:
        self.uri = hosted_uri(name, server)
        self.network, self.plan, self.folder = network, plan, folder
        self.say, self.result = say, result
        self.queue = f"chaos_partition_{uuid.uuid4().hex[:8]}"
        self.ledger = folder / "ledger.jsonl"
        self.workers: list[Workers] = []
        self.expected = set(range(plan.partition_tasks))
        self.cut_began = self.cut_at = self.healed_at = 0.0
        self._tail = ledger.Follower(str(self.ledger))

    def run(self) -> None:
        transport = get_transport(self.uri)
        bound = transport.features.recovery_seconds
        hold = 2 * bound + 2
        try:
            for host in self.network.hosts:
                log = self.folder / f"workers-{host.name}.log"
                self.workers.append(
                    Workers(
                        self.uri,
                        self.queue,
                        self.ledger,
                        log,
                        concurrency=HOST_CHILDREN,
                        host=host.namespace,
                    )
                )
            for workers in self.workers:
                workers.wait_ready(120)
            self._feed(transport, hold)
            self._wait_drained(transport)
        except Exception as exc:
            self.result.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            if self.cut_at and not self.healed_at:
                self.network.heal(self.network.hosts[0])
            for workers in self.workers:
                workers.stop()
        self._count(bound, hold)
        with contextlib.suppress(Exception):
            leftover = transport.queue_stats(self.queue)
            if leftover.ready or leftover.retrying or leftover.in_flight:
                self.result.errors.append(f"left in the queue after the run: {leftover}")
        transport.close()

    def _feed(self, transport: Transport, hold: float) -> None:
        plan = self.plan
        tasks = plan.partition_tasks
        size = -(-tasks // plan.batches)
        step = plan.feed_seconds / plan.batches
        cut_time, heal_time = plan.feed_seconds * 0.3, plan.feed_seconds * 0.3 + hold
        host = self.network.hosts[0]
        began = time.monotonic()
        index = 0
        while index < plan.batches or not self.healed_at:
            now = time.monotonic() - began
            if not self.cut_at and now >= cut_time and self._busy(host.name, now - cut_time):
                self.cut_began = time.time()
                self.network.cut(host)
                self.cut_at = time.time()
                self.say(f"    cut {host.name} off for {hold:g} s")
            elif self.cut_at and not self.healed_at and now >= heal_time:
                self.network.heal(host)
                self.healed_at = time.time()
            elif index < plan.batches and now >= index * step:
                numbers = range(index * size, min(tasks, (index + 1) * size))
                if numbers:
                    transport.submit_tasks(
                        self.queue, [{"n": n, "ms": 150 + n % 201} for n in numbers]
                    )
                index += 1
            else:
                time.sleep(0.02)

    def _busy(self, host: str, waited: float) -> bool:
        """Whether a child of ``host`` has just started a task (the cut must catch one
        mid-task, and setting a link down takes a moment; after 10 s, cut anyway)."""
        self._tail.poll()
        now = time.time()
        return (
            any(
                e.host == host and e.event == "start" and now - e.time < FRESH
                for e in self._tail.recent
            )
            or waited > 10
        )

    def _wait_drained(self, transport: Transport) -> None:
        follower = ledger.Follower(str(self.ledger))
        # the tasks' own time (0.25 s each on average, over every child), twice, on top
        work = len(self.expected) * 0.25 / (len(self.workers) * HOST_CHILDREN)
        timeout = self.plan.drain_timeout + 2 * work
        deadline = time.monotonic() + timeout
        while True:
            if self.expected <= follower.poll():
                stats = transport.queue_stats(self.queue)
                if not (stats.ready or stats.retrying or stats.in_flight):
                    break
            if time.monotonic() > deadline:
                missing = len(self.expected - follower.completed)
                self.result.errors.append(
                    f"not drained within {timeout:.0f} s: {missing} tasks not "
                    f"completed; {transport.queue_stats(self.queue)}"
                )
                return
            time.sleep(0.2)
        # the cut host's late acknowledgements (sent after the heal) arrive meanwhile
        time.sleep(max(0.0, self.healed_at + 3 - time.time()))

    def _count(self, bound: float, hold: float) -> None:
        result, cut_host = self.result, self.network.hosts[0].name
        entries = ledger.read(str(self.ledger))
        starts: dict[int, list[ledger.Entry]] = defaultdict(list)
        done: dict[int, list[ledger.Entry]] = defaultdict(list)
        for entry in entries:
            (starts if entry.event == "start" else done)[entry.n].append(entry)
        result.tasks = len(self.expected)
        result.faults = 1 if self.cut_at else 0
        result.lost = len(self.expected - set(done))
        result.duplicates = sum(len(d) - 1 for d in done.values() if len(d) > 1)
        result.bound = HOST_CHILDREN  # what the cut host's children held (prefetch 1)
        if not self.cut_at:
            result.errors.append("the host was never cut off")
            return
        cut, healed = self.cut_at, self.healed_at or math.inf
        # What the cut host was running when cut off (started there, not done by then):
        # it must come back, one attempt more, and start on another host within the bound.
        # (a task that ended while the link was being set down is left out: its
        # acknowledgement may have gone through)
        running = {
            n
            for n, begun in starts.items()
            if any(e.host == cut_host and e.time <= self.cut_began for e in begun)
            and not any(e.host == cut_host and e.time <= cut for e in done.get(n, []))
        }
        # and what it had reserved (the reply still on its way) may come back too:
        # nothing else raises an attempt here (no task fails). It may start on another
        # host, or on the cut host itself once healed (amqp puts it at the tail).
        again = {
            n: min(at)
            for n, begun in starts.items()
            if (at := [e.time for e in begun if e.time > cut and (e.attempt or 1) > 1
                       and (e.host != cut_host or e.time > healed)])
        }  # fmt: skip
        if not running:
            result.errors.append("the cut host ran no task when cut off: nothing was tested")
        for n in sorted(running - set(again)):
            result.errors.append(f"task {n}, running on the cut host, never started elsewhere")
        moved = [again[n] - cut for n in again]
        result.recovery = max(moved) if moved else None
        allowed = bound * (1 + SLACK_SHARE) + SLACK
        if result.transport in TAIL_REQUEUE and result.recovery and result.recovery > allowed:
            result.notes.append(
                f"{result.transport} puts a dead worker's task at the tail of its queue: it "
                "started once the backlog ahead of it had run"
            )
        elif result.recovery is not None and result.recovery > allowed:
            result.errors.append(
                f"a cut-off host's task started elsewhere after {result.recovery:.1f} s "
                f"(bound {bound:g} s, allowed {allowed:g} s)"
            )
        # finished while cut off: the acknowledgement could not reach the server
        unacked = [
            n
            for n, ds in done.items()
            if any(e.host == cut_host and cut < e.time < healed for e in ds)
        ]
        rerun = [n for n in unacked if n in again]
        if len(rerun) < len(unacked):
            missing = sorted(set(unacked) - set(rerun))
            result.errors.append(f"finished while cut off, never run again: {missing[:10]}")
        shared = _shared_pids(entries)
        result.notes.append(
            f"cut off {hold:g} s (bound {bound:g} s) while running {len(running)} tasks; "
            f"{len(again)} of its tasks came back and started again within "
            f"{_s(result.recovery)}; {len(unacked)} finished while "
            f"cut off, all run again: {len(rerun) == len(unacked)}; "
            f"{shared} PIDs in use on more than one host"
        )
        result.redelivery = max(
            (min(e.time for e in done[n] if e.host != cut_host) - cut for n in again
             if any(e.host != cut_host for e in done.get(n, []))),
            default=None,
        )  # fmt: skip


def _shared_pids(entries: list[ledger.Entry]) -> int:
    by_pid: dict[int, set[str]] = defaultdict(set)
    for entry in entries:
        by_pid[entry.pid].add(entry.host)
    return sum(1 for seen in by_pid.values() if len(seen) > 1)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"
