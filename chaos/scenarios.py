"""The five scenarios: a run of tasks through ``asynctask workers`` while a fault strikes.

Every scenario feeds its tasks in batches spread over ``Plan.feed_seconds`` while the
workers take them, so each fault lands mid-run; the faults are interleaved with the
batches in one thread (no submit is in flight when a server goes down: producer retries
are not what is measured here). Then it waits, bounded, until every task is completed
and the queue is empty, stops the workers and counts (``chaos.counts``).

``kills``
    SIGKILL of a random child every ``kill_every`` s, ``kills`` times.
``restart``
    the server stopped and started again mid-run (not filesys: it has none).
``connections``
    every connection of the suite dropped by the server, ``connection_kills`` times.
``supervisor``
    SIGTERM to ``asynctask workers`` mid-run, then a new one finishes the queue.
``operator``
    (amqp) one worker's connection closed by an operator (``rabbitmqctl close_connection``,
    found by its client-provided name), ``connection_kills`` times: the broker hands that
    connection's unacknowledged task to another consumer at once, so at most the task in
    flight (the prefetch, 1) repeats per close.
``poison``
    tasks that always raise, undecodable messages written by hand, a 1 MB payload, a
    deeply nested one (and one nested past the limit, which submit must refuse).
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from asynctask import InvalidTaskError, Transport, get_transport
from chaos import ledger
from chaos.counts import Fault, bound, tally
from chaos.servers import UNDECODABLE, Backend
from chaos.supervisor import CONCURRENCY, Workers

SCENARIOS = ("kills", "restart", "connections", "operator", "supervisor", "poison")
TITLES = {
    "kills": "worker kills",
    "restart": "server restart",
    "connections": "connection kills",
    "operator": "a worker's connection closed",
    "supervisor": "supervisor stop",
    "poison": "poison and bad input",
    # chaos.liveness
    "gil": "GIL hog (3x the bound)",
    "longconn": "connection kills, long tasks",
    "flood": "NOTIFY flood, busy workers",
    "group": "SIGTERM to the process group",
    "deadly": "child-killing task, innocent ones",
    # chaos.partition
    "partition": "a host cut off (3 hosts)",
    # chaos.limits
    "limits": "global rate and cap (3 hosts)",
}
#: nesting accepted (the payload rule allows 500 levels) and nesting submit must refuse
DEEP, TOO_DEEP = 400, 600
BIG = 1_000_000

Say = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """How much of everything: ``make chaos`` uses the defaults."""

    tasks: int = 2000
    kills: int = 20
    kill_every: float = 0.5
    connection_kills: int = 5
    poison: int = 20
    feed_seconds: float = 10.0
    batches: int = 40
    drain_timeout: float = 120.0
    seed: int = 1
    #: hosts (Linux namespaces) of the partition scenario
    hosts: int = 3
    #: tasks of the partition scenario (its 3 hosts drain more than one host's scenarios)
    partition_tasks: int = 3000


@dataclass
class Result:
    """One scenario on one transport."""

    transport: str
    scenario: str
    tasks: int = 0
    faults: int = 0
    lost: int = 0
    duplicates: int = 0
    bound: int = 0
    poison_failed: int | None = None
    poison_expected: int | None = None
    recovery: float | None = None
    redelivery: float | None = None
    seconds: float = 0.0
    skipped: str | None = None
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing lost, duplicates within the bound, all poison in the failed store."""
        poison = self.poison_expected is None or self.poison_failed == self.poison_expected
        return not self.errors and self.lost == 0 and self.duplicates <= self.bound and poison


def run_scenario(backend: Backend, scenario: str, plan: Plan, scratch: Path, say: Say) -> Result:
    """Run one scenario on one backend and count what happened."""
    result = Result(backend.name, scenario)
    if scenario in ("restart", "connections") and not backend.controls_server:
        result.skipped = "no server" if not backend.has_server else "a server given as it is"
        return result
    if scenario == "operator" and backend.name != "amqp":
        result.skipped = "amqp only (connections named per consumer)"
        return result
    if scenario == "operator" and not backend.controls_server:
        result.skipped = "a server given as it is"
        return result
    folder = scratch / backend.name / scenario
    folder.mkdir(parents=True, exist_ok=True)
    run = _Run(backend, get_transport(backend.uri), scenario, plan, folder, say, result)
    return drive(run, run.execute, result)


class Driven(Protocol):
    """A scenario's run, as ``drive`` needs it."""

    def stop_workers(self) -> None: ...

    def count(self) -> None: ...


def drive(run: Driven, execute: Callable[[], None], result: Result) -> Result:
    """Execute a scenario, always stop its workers, then time and count it.

    An error of the scenario itself is recorded in the result instead of ending the run,
    so the other scenarios and transports still run.
    """
    began = time.monotonic()
    try:
        execute()
    except Exception as exc:
        result.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        run.stop_workers()
    result.seconds = time.monotonic() - began
    run.count()
    return result


class _Run:
    """The state of one scenario while it runs."""

    def __init__(
        self,
        backend: Backend,
        transport: Transport,
        scenario: str,
        plan: Plan,
        folder: Path,
        say: Say,
        result: Result,
    ) -> None:
        self.backend, self.transport, self.scenario = backend, transport, scenario
        self.plan, self.folder, self.say, self.result = plan, folder, say, result
        self.queue = f"chaos_{scenario}_{uuid.uuid4().hex[:8]}"
        self.ledger = folder / "ledger.jsonl"
        self.rng = random.Random(plan.seed)
        self.faults: list[Fault] = []
        self.expected = set(range(plan.tasks))
        self.poison: set[int] = set()
        self.undecodable = 0
        self.workers: Workers | None = None
        self.spare: list[Workers] = []

    # -- the run ----------------------------------------------------------------------

    def execute(self) -> None:
        self.workers = self._start_workers()
        self.workers.wait_ready()
        began = time.monotonic()
        for at, action in self._timeline():
            pause = began + at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            if not self.workers.alive():
                raise RuntimeError(f"asynctask workers exited ({self.workers.process.returncode})")
            action()
        self._wait_until_drained()
        time.sleep(1.0)  # a task that comes back late would show as a duplicate or leftover

    def _start_workers(self) -> Workers:
        return Workers(self.backend.uri, self.queue, self.ledger, self.folder / "workers.log")

    def _timeline(self) -> list[tuple[float, Callable[[], None]]]:
        plan = self.plan
        step = plan.feed_seconds / plan.batches
        size = -(-plan.tasks // plan.batches)
        events: list[tuple[float, Callable[[], None]]] = []
        for index in range(plan.batches):
            numbers = range(index * size, min(plan.tasks, (index + 1) * size))
            events.append((index * step, partial(self._submit, numbers)))
        middle = plan.feed_seconds * 0.4
        if self.scenario == "kills":
            events += [((i + 1) * plan.kill_every, self._kill) for i in range(plan.kills)]
        elif self.scenario == "restart":
            events.append((middle, self._restart))
        elif self.scenario == "connections":
            every = plan.feed_seconds / plan.connection_kills
            events += [((i + 0.5) * every, self._drop) for i in range(plan.connection_kills)]
        elif self.scenario == "operator":
            every = plan.feed_seconds / plan.connection_kills
            events += [((i + 0.5) * every, self._close_one) for i in range(plan.connection_kills)]
        elif self.scenario == "supervisor":
            events.append((middle, self._stop_supervisor))
        elif self.scenario == "poison":
            events += self._bad_input(step)
        return sorted(events, key=lambda event: event[0])

    def _submit(self, numbers: range) -> None:
        if numbers:
            payloads = [{"n": n, "ms": round(self.rng.uniform(0, 20), 2)} for n in numbers]
            self.transport.submit_tasks(self.queue, payloads)

    def _payload(self, **extra: Any) -> dict[str, Any]:
        n = self.plan.tasks + len(self.poison) + len(self.expected - set(range(self.plan.tasks)))
        return {"n": n, "ms": 1, **extra}

    # -- faults -----------------------------------------------------------------------

    def _kill(self) -> None:
        assert self.workers is not None
        now = time.time()
        pid = self.workers.kill_random_child(self.rng)
        if pid is None:
            self.result.notes.append("a kill found no live child")
            return
        self.faults.append(Fault("kill", now, now, pid))

    def _restart(self) -> None:
        began = time.time()
        self.backend.restart()
        self.faults.append(Fault("restart", began, time.time()))
        self.say(f"    restarted the server in {time.time() - began:.1f} s")

    def _drop(self) -> None:
        began = time.time()
        count = self.backend.kill_connections()
        self.faults.append(Fault("connections", began, time.time(), detail=str(count)))

    def _close_one(self) -> None:
        began = time.time()
        name = self.backend.close_worker_connection(self.queue, self.rng)
        if name is None:
            self.result.notes.append("a close found no worker connection")
            return
        self.faults.append(Fault("close", began, time.time(), detail=name))

    def _stop_supervisor(self) -> None:
        assert self.workers is not None
        began = time.time()
        code = self.workers.terminate()
        if code != 0:
            self.result.errors.append(f"asynctask workers exited {code} on SIGTERM (expected 0)")
        self.spare.append(self.workers)
        self.workers = self._start_workers()
        self.faults.append(Fault("stop", began, time.time(), detail=f"exit {code}"))
        self.say(f"    stopped the supervisor in {time.time() - began:.1f} s; started another")

    def _bad_input(self, step: float) -> list[tuple[float, Callable[[], None]]]:
        events: list[tuple[float, Callable[[], None]]] = []
        for index in range(self.plan.poison):
            events.append((index * step + step / 2, self._submit_poison))
        for index in range(len(UNDECODABLE)):
            events.append(((2 * index + 1.25) * step, partial(self._write_bad, index)))
        events.append(
            (
                self.plan.feed_seconds * 0.3,
                partial(self._submit_extra, "a 1 MB payload", blob="x" * BIG),
            )
        )
        events.append(
            (
                self.plan.feed_seconds * 0.5,
                partial(self._submit_extra, f"a payload nested {DEEP} deep", deep=_nest(DEEP)),
            )
        )
        events.append((self.plan.feed_seconds * 0.6, self._submit_too_deep))
        return events

    def _submit_poison(self) -> None:
        payload = self._payload(poison=True)
        self.poison.add(payload["n"])
        self.transport.submit_task(self.queue, payload)

    def _submit_extra(self, what: str, **extra: Any) -> None:
        payload = self._payload(**extra)
        try:
            self.transport.submit_task(self.queue, payload)
        except Exception as exc:  # the run goes on: the table shows the failure
            self.result.errors.append(f"submitting {what} raised {type(exc).__name__}: {exc}")
            return
        self.expected.add(payload["n"])

    def _write_bad(self, index: int) -> None:
        self.backend.write_undecodable(self.queue, (UNDECODABLE[index],))
        self.undecodable += 1

    def _submit_too_deep(self) -> None:
        what = f"a payload nested {TOO_DEEP} deep"
        try:
            self.transport.submit_task(self.queue, {"n": -1, "deep": _nest(TOO_DEEP)})
        except InvalidTaskError:
            self.result.notes.append(f"{what} was refused at submit")
            return
        except Exception as exc:
            self.result.errors.append(f"{what} raised {type(exc).__name__}, not InvalidTaskError")
            return
        self.result.errors.append(f"{what} was accepted")

    # -- the end ----------------------------------------------------------------------

    def _wait_until_drained(self) -> None:
        follower = ledger.Follower(str(self.ledger))
        deadline = time.monotonic() + self.plan.drain_timeout
        failed_wanted = len(self.poison) + self.undecodable
        while True:
            assert self.workers is not None
            if self.expected <= follower.poll() and self._drained(failed_wanted):
                return
            if time.monotonic() > deadline:
                missing = len(self.expected - follower.completed)
                stats = self.transport.queue_stats(self.queue)
                self.result.errors.append(
                    f"not drained within {self.plan.drain_timeout:g} s: {missing} tasks not "
                    f"completed; {stats}"
                )
                return
            if not self.workers.alive():
                raise RuntimeError(f"asynctask workers exited ({self.workers.process.returncode})")
            time.sleep(0.2)

    def _drained(self, failed_wanted: int) -> bool:
        stats = self.transport.queue_stats(self.queue)
        busy = [stats.ready, stats.delayed, stats.retrying, stats.in_flight]
        if any(count for count in busy):
            return False
        return not failed_wanted or (stats.failed or 0) >= failed_wanted

    def stop_workers(self) -> None:
        for workers in [*self.spare, *([self.workers] if self.workers else [])]:
            workers.stop()

    def count(self) -> None:
        result, plan = self.result, self.plan
        numbers = tally(ledger.read(str(self.ledger)), self.expected, self.poison, self.faults)
        result.tasks = len(self.expected) + len(self.poison)
        result.lost = len(numbers.lost)
        result.duplicates = numbers.duplicates
        result.bound = bound(self.faults, CONCURRENCY)
        result.recovery, result.redelivery = numbers.recovery, numbers.redelivery
        result.faults = len(self.faults)
        if numbers.lost:
            result.notes.append(f"lost: {_some(numbers.lost)}")
        if numbers.unexplained:
            result.errors.append(f"duplicates no fault explains: {_some(numbers.unexplained)}")
        if numbers.stored_twice:
            result.notes.append(f"{numbers.stored_twice} stored twice (attempt 1 both times)")
        if numbers.poison_completed:
            result.errors.append(f"poison completed: {_some(numbers.poison_completed)}")
        leftover = self.transport.queue_stats(self.queue)
        if leftover.ready or leftover.delayed or leftover.retrying or leftover.in_flight:
            result.errors.append(f"left in the queue after the run: {leftover}")
        if self.scenario == "poison":
            self._count_failed()
        if self.scenario == "connections":
            counts = ", ".join(f.detail for f in self.faults)
            result.notes.append(f"dropped {counts} connections")
        if self.scenario == "operator":
            result.notes.append(f"closed {len(self.faults)} worker connections, one at a time")
        if self.scenario == "kills" and result.faults < plan.kills:
            result.notes.append(f"{result.faults} of {plan.kills} kills found a child")

    def _count_failed(self) -> None:
        result = self.result
        failed = self.transport.failed_tasks(self.queue, limit=1000)
        poison = [f for f in failed if f.payload is not None and f.payload.get("poison")]
        raw = [f for f in failed if f.payload is None]
        others = [f for f in failed if f.payload is not None and not f.payload.get("poison")]
        result.faults = len(self.poison) + self.undecodable + 3
        result.poison_failed = len(poison) + len(raw)
        result.poison_expected = len(self.poison) + self.undecodable
        result.notes.append(
            f"failed store: {len(poison)} of {len(self.poison)} poison tasks, {len(raw)} of "
            f"{self.undecodable} undecodable messages"
        )
        if others:
            result.errors.append(f"{len(others)} good tasks in the failed store: {others[0]}")


def _nest(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def _some(numbers: list[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:10])
    return f"{len(numbers)} ({shown}{', ...' if len(numbers) > 10 else ''})"
