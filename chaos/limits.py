"""The global limits scenario: a rate and a cap held across 3 hosts x 2 children.

Hosts and server as in ``chaos.partition`` (namespaces, a server of the run's own).
Two queues, one after the other, each served by ``asynctask workers`` on every host with
2 children (prefetch 1):

``rate``
    ``{"rate_max_calls": 50, "rate_period": 5, "rate_scope": "global"}``, ``RATE_TASKS``
    short tasks: in every 5 s window at most 50 start (from the ledger's start times, a
    window shortened by ``JITTER`` for the time between a start being counted and its
    line being written), and the run lasts as long as the rate says (so the limit was
    binding: per child, the 6 children would have started them all at once).
``cap``
    ``{"max_running": 3}``, ``CAP_TASKS`` tasks of ``CAP_MS`` ms: never more than 3 run at
    once (the ledger's start-to-end intervals, swept), and 3 do run at once; one child of
    ``host1`` is SIGKILLed while it runs a task (holding a slot): the slot is not leaked,
    3 run at once again within ``REFILL`` s, and every task completes.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

from asynctask import Transport, get_transport
from chaos import hosts, ledger
from chaos.hosted import hosted_uri, hosts_with_server
from chaos.scenarios import Plan, Result, Say
from chaos.supervisor import Workers

SCENARIO = "limits"
TRANSPORTS = ("redis", "pgsql")
HOST_CHILDREN = 2
CALLS, PERIOD = 50, 5.0
RATE: dict[str, Any] = {"rate_max_calls": CALLS, "rate_period": PERIOD, "rate_scope": "global"}
RATE_TASKS = 130
CAP = 3
CAP_TASKS = 18
CAP_MS = 1500
#: seconds between a start being counted and its ledger line
JITTER = 0.25
#: seconds within which a killed child's slot must be in use again
REFILL = 4.0


def run_limits(
    name: str, plan: Plan, scratch: Path, say: Say, servers: dict[str, str] | None = None
) -> Result:
    """Run the global limits scenario on transport ``name`` with a server of its own."""
    result = Result(name, SCENARIO)
    if name not in TRANSPORTS:
        result.skipped = (
            "redis and pgsql (filesys is one host; amqp keeps them in asynctask_state: tests/amqp)"
            if name in ("filesys", "amqp")
            else "redis and pgsql only"
        )
        return result
    reason = hosts.unavailable()
    if reason is not None:
        result.skipped = f"no namespaces: {reason}"
        return result
    folder = scratch / name / SCENARIO
    folder.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    with hosts_with_server(name, plan.hosts) as (network, server):
        if servers is not None:
            servers[f"{name} (limits)"] = server.version()
        uri = hosted_uri(name, server)
        transport = get_transport(uri)
        try:
            run = _Limits(uri, transport, network, folder, say, result)
            for part in (run.rate, run.cap):
                at = time.monotonic()
                try:
                    part()
                    say(f"    {part.__name__}: {time.monotonic() - at:.1f} s")
                except Exception as exc:
                    result.errors.append(f"{part.__name__}: {type(exc).__name__}: {exc}")
                finally:
                    run.stop()
        finally:
            transport.close()
    result.seconds = time.monotonic() - began
    return result


class _Limits:
    """The two parts of the scenario, on one server and its hosts."""

    def __init__(
        self,
        uri: str,
        transport: Transport,
        network: hosts.Network,
        folder: Path,
        say: Say,
        result: Result,
    ) -> None:
        self.uri, self.transport, self.network = uri, transport, network
        self.folder, self.say, self.result = folder, say, result
        self.workers: list[Workers] = []

    def _start(self, part: str, options: dict[str, Any]) -> tuple[str, Path]:
        queue = f"chaos_{part}_{uuid.uuid4().hex[:8]}"
        book = self.folder / f"ledger-{part}.jsonl"
        for host in self.network.hosts:
            log = self.folder / f"workers-{part}-{host.name}.log"
            self.workers.append(
                Workers(
                    self.uri,
                    queue,
                    book,
                    log,
                    concurrency=HOST_CHILDREN,
                    host=host.namespace,
                    options=options,
                )
            )
        at = time.monotonic()
        for workers in self.workers:
            workers.wait_ready(120)
        self.say(f"    {part}: workers ready in {time.monotonic() - at:.1f} s")
        return queue, book

    def _drain(self, queue: str, book: Path, count: int, timeout: float) -> None:
        follower = ledger.Follower(str(book))
        deadline = time.monotonic() + timeout
        while len(follower.poll()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count - len(follower.completed)} tasks not done")
            time.sleep(0.2)

    def stop(self) -> None:
        at = time.monotonic()
        for workers in self.workers:
            workers.stop()
        self.workers = []
        self.say(f"    stopped in {time.monotonic() - at:.1f} s")

    # -- the rate ---------------------------------------------------------------------

    def rate(self) -> None:
        calls, period = CALLS, PERIOD
        queue, book = self._start("rate", RATE)
        self.transport.submit_tasks(queue, [{"n": n, "ms": 10} for n in range(RATE_TASKS)])
        self._drain(queue, book, RATE_TASKS, 120)
        starts = sorted(e.time for e in ledger.read(str(book)) if e.event == "start")
        most = _most_within(starts, period - JITTER)
        strict = _most_within(starts, period)
        spread = starts[-1] - starts[0]
        # 130 starts at 50 per 5 s: the last window opens 10 s after the first
        needed = (RATE_TASKS - 1) // calls * period
        self.result.tasks += RATE_TASKS
        self.result.notes.append(
            f"rate {calls} per {period:g} s over 3 hosts x {HOST_CHILDREN} children: at most "
            f"{most} starts in any {period - JITTER:g} s ({strict} in {period:g} s); "
            f"{RATE_TASKS} starts over {spread:.1f} s"
        )
        if most > calls:
            self.result.errors.append(f"{most} starts within {period - JITTER:g} s (rate {calls})")
        if spread < needed - 1.0:
            self.result.errors.append(f"{RATE_TASKS} tasks started in {spread:.1f} s: no limit")

    # -- the cap ----------------------------------------------------------------------

    def cap(self) -> None:
        queue, book = self._start("cap", {"max_running": CAP, "prefetch": 1})
        self.transport.submit_tasks(queue, [{"n": n, "ms": CAP_MS} for n in range(CAP_TASKS)])
        killed_at, victim = self._kill_a_runner(book, self.workers[0])
        self._drain(queue, book, CAP_TASKS, 180)
        entries = ledger.read(str(book))
        spans = _spans(entries, killed_at, victim)
        most = _most_at_once(spans)
        refilled = _full_again(spans, killed_at, CAP)
        self.result.tasks += CAP_TASKS
        self.result.faults += 1
        self.result.notes.append(
            f"max_running {CAP}: at most {most} ran at once; a child of host1 killed while "
            f"running a task (its slot held), {CAP} ran at once again "
            + (f"{refilled:.1f} s later" if refilled is not None else "never")
        )
        if most > CAP:
            self.result.errors.append(f"{most} tasks ran at once (max_running {CAP})")
        if most < CAP:
            self.result.errors.append(f"never {CAP} at once: the cap was not used")
        if refilled is None or refilled > REFILL:
            self.result.errors.append(f"the killed child's slot was not free within {REFILL:g} s")
        self.result.recovery = refilled

    def _kill_a_runner(self, book: Path, workers: Workers) -> tuple[float, tuple[str, int]]:
        """SIGKILL a child of ``workers`` (host1) while it runs a task."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            last: dict[tuple[str, int], str] = {}
            for entry in ledger.read(str(book)):
                last[entry.process] = entry.event
            running = {
                pid for (host, pid), event in last.items() if host == "host1" and event == "start"
            }
            for child in workers.children():
                inner = _inner_pid(child)
                if inner in running:
                    os.kill(child, signal.SIGKILL)
                    return time.time(), ("host1", inner)
            time.sleep(0.05)
        raise TimeoutError("no child of host1 ran a task within 60 s")


def _inner_pid(pid: int) -> int | None:
    """The pid, in its own PID space, of this namespace's process ``pid``."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    except OSError:
        pass
    return None


def _most_within(times: list[float], width: float) -> int:
    most, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] >= width:
            first += 1
        most = max(most, last - first + 1)
    return most


def _spans(
    entries: list[ledger.Entry], killed_at: float, victim: tuple[str, int]
) -> list[tuple[float, float]]:
    """(start, end) of every run: its ``done``, or the kill for the victim's last one."""
    open_: dict[tuple[str, int], float] = {}
    spans = []
    for entry in entries:
        if entry.event == "start":
            open_[entry.process] = entry.time
        elif entry.event == "done" and entry.process in open_:
            spans.append((open_.pop(entry.process), entry.time))
    for process, began in open_.items():
        spans.append((began, killed_at if process == victim else float("inf")))
    return spans


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def _full_again(spans: list[tuple[float, float]], after: float, cap: int) -> float | None:
    """Seconds after ``after`` until ``cap`` tasks run at once again."""
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    now = 0
    for at, step in events:
        now += step
        if at > after and now >= cap:
            return at - after
    return None
