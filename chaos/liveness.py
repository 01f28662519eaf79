"""The liveness scenarios: a live worker's task never runs twice, a dead one's comes back.

Each runs a few tasks through ``asynctask workers`` on the backend's short recovery bound
``R`` (``features.recovery_seconds``, about 2 s), counts from the ledger, and expects:

``gil``
    two tasks hold the GIL for 3 R in one C call while the other children wait, twenty
    short tasks beside them: 0 duplicates.
``longconn``
    three tasks of 3 R, a fourth child waiting; every connection of the suite dropped
    three times meanwhile (not filesys): 0 duplicates while the workers live. On AMQP the
    broker hands a closed connection's tasks to others at once: at most the tasks in
    flight repeat per drop.
``flood``
    (pgsql) two tasks hold the GIL for 3 R while 50,000 NOTIFYs arrive on their queue's
    channel, which their children do not read meanwhile: 0 duplicates.
``group``
    ``kill -TERM -PGID`` (systemd's ``KillMode=control-group``) while four 3 s tasks run:
    the command exits 0 and every task started finishes (0 cut short); a new supervisor
    finishes the queue.
``deadly``
    two tasks that SIGKILL their child, among 40 innocent ones, with prefetch 4: the
    deadly ones reach the failed store, every innocent one runs once and succeeds.
"""

from __future__ import annotations

import math
import os
import signal
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg

from asynctask import Transport, get_transport
from chaos import ledger
from chaos.scenarios import Plan, Result, Say, drive
from chaos.servers import Backend, PgsqlBackend
from chaos.supervisor import GRACE, Workers

SCENARIOS = ("gil", "longconn", "flood", "group", "deadly")
#: NOTIFYs sent in the flood scenario
FLOOD = 50_000


def run_scenario(backend: Backend, scenario: str, plan: Plan, scratch: Path, say: Say) -> Result:
    """Run one liveness scenario on one backend and count what happened."""
    result = Result(backend.name, scenario)
    if scenario == "longconn" and not backend.controls_server:
        result.skipped = "no server" if not backend.has_server else "a server given as it is"
        return result
    if scenario == "flood" and backend.name != "pgsql":
        result.skipped = "pgsql only"
        return result
    folder = scratch / backend.name / scenario
    folder.mkdir(parents=True, exist_ok=True)
    run = _Run(backend, get_transport(backend.uri), scenario, plan, folder, say, result)
    return drive(run, getattr(run, f"_{scenario}"), result)


class _Run:
    """The state of one liveness scenario while it runs."""

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
        self.expected: set[int] = set()
        self.deadly: set[int] = set()
        self.workers: list[Workers] = []
        #: seconds a task holds its child to outlast the recovery bound three times
        self.hold = math.ceil(3 * transport.features.recovery_seconds)

    def _start(self, **options: Any) -> Workers:
        log = self.folder / f"workers-{len(self.workers)}.log"
        workers = Workers(self.backend.uri, self.queue, self.ledger, log, **options)
        self.workers.append(workers)
        workers.wait_ready()
        return workers

    def _submit(self, payloads: list[dict[str, Any]]) -> None:
        first = len(self.expected) + len(self.deadly)
        numbered = [{"n": first + i, **p} for i, p in enumerate(payloads)]
        for payload in numbered:
            (self.deadly if payload.get("die") else self.expected).add(payload["n"])
        self.transport.submit_tasks(self.queue, numbered)

    def _entries(self) -> list[ledger.Entry]:
        return ledger.read(str(self.ledger))

    def _wait_started(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len({e.n for e in self._entries() if e.event == "start"}) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} tasks did not start within {timeout:g} s")
            time.sleep(0.05)

    def _wait_drained(self) -> None:
        deadline = time.monotonic() + self.plan.drain_timeout
        while True:
            entries = self._entries()
            done = {e.n for e in entries if e.event == "done"}
            # a repeated run still going (AMQP hands a dropped connection's tasks to
            # others while their first worker runs them) must end before the count
            started = Counter(e.n for e in entries if e.event == "start" and e.n in self.expected)
            finished = Counter(e.n for e in entries if e.event == "done")
            running = sum(max(0, started[n] - finished[n]) for n in started)
            stats = self.transport.queue_stats(self.queue)
            busy = (stats.ready or 0) + (stats.retrying or 0) + (stats.in_flight or 0)
            failed_ok = (stats.failed or 0) >= len(self.deadly)
            if self.expected <= done and not busy and not running and failed_ok:
                time.sleep(1.0)  # a task that came back late would show as a duplicate
                return
            if time.monotonic() > deadline:
                self.result.errors.append(
                    f"not drained within {self.plan.drain_timeout:g} s: "
                    f"{len(self.expected - done)} tasks not completed; {stats}"
                )
                return
            time.sleep(0.2)

    # -- the scenarios ----------------------------------------------------------------

    def _gil(self) -> None:
        self._start()
        self._submit([{"gil": self.hold}, {"gil": self.hold}])
        self._submit([{"ms": 10} for _ in range(20)])
        self.result.faults = 2
        self._wait_drained()

    def _longconn(self) -> None:
        self._start()
        self._submit([{"ms": self.hold * 1000} for _ in range(3)])
        self._wait_started(3)
        pause = self.transport.features.recovery_seconds / 2
        for _ in range(3):
            dropped = self.backend.kill_connections()
            self.result.faults += 1
            self.result.notes.append(f"dropped {dropped} connections")
            time.sleep(pause)
        if self.backend.name == "amqp":
            # the broker redelivers a closed connection's unacknowledged tasks at once
            self.result.bound = 3 * self.result.faults
        self._wait_drained()

    def _flood(self) -> None:
        from asynctask_pgsql.schema import channel

        self._start(concurrency=2)
        self._submit([{"gil": self.hold}, {"gil": self.hold}])
        self._wait_started(2)
        schema = _option(self.backend.uri, "schema", "asynctask")
        name = channel(schema, self.queue)
        began = time.monotonic()
        assert isinstance(self.backend, PgsqlBackend)
        with psycopg.connect(self.backend.conninfo, autocommit=True) as conn:
            for _ in range(FLOOD // 1000):
                conn.execute(
                    "SELECT count(pg_notify(%s, 'flood ' || g)) FROM generate_series(1, 1000) g",
                    (name,),
                )
        self.result.faults = FLOOD
        self.result.notes.append(f"{FLOOD} NOTIFYs in {time.monotonic() - began:.1f} s")
        self._wait_drained()

    def _group(self) -> None:
        workers = self._start(own_group=True)
        self._submit([{"ms": 3000} for _ in range(8)])
        self._wait_started(4)
        began = time.monotonic()
        os.killpg(workers.process.pid, signal.SIGTERM)
        self.result.faults = 1
        try:
            code = workers.process.wait(GRACE + 10)
        except Exception:
            code = None
        self.result.notes.append(f"exit {code} after {time.monotonic() - began:.1f} s")
        if code != 0:
            self.result.errors.append(f"asynctask workers exited {code} on SIGTERM to its group")
        self._start()  # a new supervisor finishes the queue
        self._wait_drained()

    def _deadly(self) -> None:
        self._start(concurrency=2, prefetch=4)
        innocent: list[dict[str, Any]] = [{"ms": 20} for _ in range(40)]
        innocent[5] = {"die": True}
        innocent[25] = {"die": True}
        self._submit(innocent)
        self.result.faults = 2
        self._wait_drained()

    # -- the end ----------------------------------------------------------------------

    def stop_workers(self) -> None:
        for workers in self.workers:
            workers.stop()

    def count(self) -> None:
        result = self.result
        entries = self._entries()
        starts = Counter(e.n for e in entries if e.event == "start" and e.n in self.expected)
        done = Counter(e.n for e in entries if e.event == "done")
        result.tasks = len(self.expected) + len(self.deadly)
        result.lost = len(self.expected - set(done))
        result.duplicates = sum(count - 1 for count in starts.values() if count > 1)
        cut = sum(max(0, starts[n] - done[n]) for n in starts)
        if cut:
            result.errors.append(f"{cut} tasks started and never finished (cut short)")
        if self.deadly:
            failed = self.transport.failed_tasks(self.queue, limit=1000)
            ids = {f.payload.get("n") for f in failed if f.payload is not None}
            result.poison_expected = len(self.deadly)
            result.poison_failed = len(ids & self.deadly)
            innocent = ids & self.expected
            if innocent:
                result.errors.append(f"{len(innocent)} innocent tasks in the failed store")
            result.notes.append(
                f"failed store: {result.poison_failed} of {len(self.deadly)} deadly tasks"
            )
        leftover = self.transport.queue_stats(self.queue)
        if leftover.ready or leftover.retrying or leftover.in_flight:
            result.errors.append(f"left in the queue after the run: {leftover}")


def _option(uri: str, name: str, default: str) -> str:
    for pair in uri.partition("?")[2].split("&"):
        key, _, value = pair.partition("=")
        if key == name:
            return value
    return default
