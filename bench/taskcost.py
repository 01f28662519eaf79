"""``python -m bench.taskcost``: where a redis worker child's time per task goes (issue 20).

For each prefetch, a worker child's run loop (``asynctask.runner.run_loop`` with the
child's report pipe, the no-op bench worker, statuses tracked unless ``--untracked``)
drains a filled redis queue in this process, twice:

1. **plain**: wall time per task, round trips per task, and the time spent inside them:
   redis-py's ``send_packed_command`` + ``read_response`` on this thread (the wire, the
   server's work and the driver's reply parser). *Ours* is the rest of the wall time:
   the run loop, the consumer, settling, the hooks, logging, the report pipe, ``process()``.
2. **profiled** (cProfile, this thread): the shares of *ours* by part, applied to the
   plain run's figure (cProfile inflates call-heavy code, so its times are only used as
   shares). A builtin (``isinstance``, ``os.write``...) counts in the part of its caller.

Round trips per task and Python calls per task do not depend on the machine's load; the
microseconds do (2 shared cores: compare figures from one run only).

With ``--instructions`` it counts instead, under ``valgrind --tool=callgrind``, the
instructions per task of the run loop (all of the process's threads, the start-up left
out): a figure the machine's load does not move, to compare two commits.

Examples: ``python -m bench.taskcost --tasks 20000 --prefetch 1,4,32``;
``python -m bench.taskcost --instructions --tasks 2000 --prefetch 4,32 --untracked``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from asynctask.reports import ReportWriter
from asynctask.runner import LoopOptions, run_loop
from asynctask.transport import Transport
from bench import ours
from bench.plan import unique_name
from bench.workers import BenchNoopWorker

#: the parts of our code, in the order the table shows them
PARTS = ("runner", "consumer", "settle", "hooks", "logging", "reports", "worker", "other")

#: (part, what a frame's file path contains), the first match wins; the driver's own
#: frames run inside the timed round trips, so they are left out of the parts
_WHERE = (
    ("driver", "/redis/"),
    ("driver", "socket"),
    ("consumer", "asynctask_redis/"),
    ("consumer", "asynctask/validation.py"),
    ("consumer", "/json/"),
    ("consumer", "<string>"),  # dataclass __init__ (Delivery)
    ("runner", "asynctask/runner.py"),
    ("runner", "asynctask/draining.py"),
    ("settle", "asynctask/attempts.py"),
    ("settle", "asynctask/status.py"),
    ("hooks", "asynctask/events.py"),
    ("hooks", "asynctask_otel/"),
    ("hooks", "asynctask_prometheus/"),
    ("hooks", "opentelemetry/"),
    ("hooks", "asynctask_testworkers/"),
    ("logging", "/logging/"),
    ("reports", "asynctask/reports.py"),
    ("worker", "bench/workers.py"),
)


@dataclass
class Cost:
    """One drain's cost per task (microseconds), split as the module docstring says."""

    prefetch: int
    tracked: bool
    tasks: int
    wall: float
    round_trip: float
    trips: float
    cpu: float
    #: Python function calls per task in this thread (cProfile's count, builtins included)
    calls: float = 0.0
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def ours(self) -> float:
        """Microseconds per task outside the round trips."""
        return max(0.0, self.wall - self.round_trip)

    @property
    def rate(self) -> float:
        """Tasks per second of the plain run."""
        return 1e6 / self.wall if self.wall else 0.0

    def to_json(self) -> dict[str, Any]:
        """The cost as plain JSON values."""
        return {**asdict(self), "ours": self.ours, "rate": self.rate}


class _Trips:
    """Counts and times redis-py's sends and reads on one thread (patched in, then out)."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self.thread = threading.get_ident()

    @contextmanager
    def watching(self) -> Iterator[None]:
        from redis.connection import AbstractConnection

        send, read = AbstractConnection.send_packed_command, AbstractConnection.read_response

        def timed(fn: Callable[..., Any], counts: bool) -> Callable[..., Any]:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                if threading.get_ident() != self.thread:
                    return fn(*args, **kwargs)  # the heartbeat's thread
                began = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.seconds += time.perf_counter() - began
                    self.count += counts

            return wrapper

        AbstractConnection.send_packed_command = timed(send, True)  # type: ignore[method-assign]
        AbstractConnection.read_response = timed(read, False)  # type: ignore[method-assign]
        try:
            yield
        finally:
            AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
            AbstractConnection.read_response = read  # type: ignore[method-assign]


def _part(filename: str) -> str:
    for part, where in _WHERE:
        if where in filename:
            return part
    return "other"


def shares(stats: pstats.Stats) -> tuple[dict[str, float], int]:
    """Our code's seconds by part from a profile, and the number of calls in it."""
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    found = dict.fromkeys(PARTS, 0.0)
    calls = 0

    def part_of(func: tuple[str, int, str]) -> str:
        filename, _, name = func
        if filename != "~":
            part = _part(filename)
            return "" if part == "other" else part  # the standard library: its callers'
        if "socket" in name or "select" in name:
            return "driver"
        return ""  # a builtin: its callers' part

    for func, (_, ncalls, own, _, callers) in table.items():
        calls += ncalls
        part = part_of(func)
        if part == "driver":
            continue
        if part:
            found[part] += own
            continue
        # a builtin or a standard library helper (``os.environ.get``): split its time
        # over its callers, by the calls each made
        total = sum(c[1] for c in callers.values()) or 1
        for caller, numbers in callers.items():
            theirs = part_of(caller) or "other"
            if theirs != "driver":
                found[theirs] += own * numbers[1] / total
    return found, calls


def _drain(
    transport: Transport,
    prefetch: int,
    tasks: int,
    tracked: bool,
    profile: bool,
    counted: bool = False,
    pid: int | None = None,
) -> tuple[float, float, _Trips, cProfile.Profile | None]:
    queue = unique_name("bench_cost")
    if not tracked:  # as the bench's --untracked: marked before the submits (no records)
        transport.state().set_tracking(queue, False)
    ours.fill(transport, queue, tasks)
    worker = BenchNoopWorker()
    worker.setup()
    null = os.open(os.devnull, os.O_WRONLY)
    report = ReportWriter(null)  # the child's pipe to its supervisor (asynctask.reports)
    options = LoopOptions(
        stop_when_idle=True,
        prefetch=prefetch,
        track_status=tracked,
        on_start=report.started,
        on_settled=report.settled,
        on_idle=report.flush,
    )
    trips = _Trips()
    profiler = cProfile.Profile() if profile else None
    try:
        with trips.watching():
            cpu, began = time.process_time(), time.perf_counter()
            if profiler is not None:
                profiler.enable()
            if counted:
                _callgrind(True, pid)  # under ``--instructions``: count the run loop only
            done = run_loop(worker, transport, queue, options).processed
            if counted:
                _callgrind(False, pid)
            if profiler is not None:
                profiler.disable()
            wall, cpu = time.perf_counter() - began, time.process_time() - cpu
    finally:
        worker.teardown()
        os.close(null)
        transport.purge(queue)
    if done != tasks:
        raise RuntimeError(f"the run loop took {done} of {tasks} tasks")
    return wall, cpu, trips, profiler


def measure(transport: Transport, prefetch: int, tasks: int, tracked: bool = True) -> Cost:
    """The cost per task of one run loop draining ``tasks`` at ``prefetch``."""
    os.environ.pop("BENCH_LEDGER", None)  # process() notes nothing: no file write
    wall, cpu, trips, _ = _drain(transport, prefetch, tasks, tracked, profile=False)
    us = 1e6 / tasks
    cost = Cost(
        prefetch, tracked, tasks, wall * us, trips.seconds * us, trips.count / tasks, cpu * us
    )
    _, _, _, profiler = _drain(transport, prefetch, tasks, tracked, profile=True)
    assert profiler is not None
    found, calls = shares(pstats.Stats(profiler))
    total = sum(found.values()) or 1.0
    cost.parts = {part: cost.ours * seconds / total for part, seconds in found.items()}
    cost.calls = calls / tasks
    return cost


def _callgrind(on: bool, pid: int | None = None) -> None:
    """Switch callgrind's instrumentation of this process (or of ``pid``) on or off."""
    command = ["callgrind_control", "-i", "on" if on else "off", str(pid or os.getpid())]
    subprocess.run(command, capture_output=True, check=True)


def instructions(uri: str, prefetch: int, tasks: int, tracked: bool) -> float:
    """Instructions per task of the run loop (``valgrind --tool=callgrind``), all of this
    process's threads: a count the machine's load does not move (compare two commits)."""
    command = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
    command += ["--callgrind-out-file=/dev/null", sys.executable, "-m", "bench.taskcost"]
    command += ["--uri", uri, "--prefetch", str(prefetch), "--tasks", str(tasks)]
    command += ["--counted-loop", "1" if tracked else "0"]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=3600)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"callgrind counted nothing: {done.stderr[-500:]}")
    return int(found[1]) / tasks


HEADER = [
    "prefetch",
    "tracked",
    "tasks/s in-process",
    "round trips / task",
    "us / task in round trips",
    "us / task ours",
    *(f"ours: {p}" for p in PARTS),
    "Python calls / task",
]


def cells(cost: Cost) -> list[str]:
    """One table row."""
    return [
        str(cost.prefetch),
        "yes" if cost.tracked else "no",
        f"{cost.rate:,.0f}",
        f"{cost.trips:.2f}",
        f"{cost.round_trip:.1f}",
        f"{cost.ours:.1f}",
        *(f"{cost.parts.get(p, 0.0):.1f}" for p in PARTS),
        f"{cost.calls:.0f}",
    ]


def main(argv: list[str]) -> int:
    """Measure each prefetch; print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.taskcost", description=__doc__)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--prefetch", default="1,4,32", help="comma-separated (1,4,32)")
    parser.add_argument("--untracked", action="store_true", help="track_status = False too")
    parser.add_argument("--uri", default=None, help="a redis URI (the bench's by default)")
    parser.add_argument("--json", action="store_true", help="print the costs as JSON")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="instead: instructions per task of the run loop under callgrind (valgrind); "
        "2,000 tasks are plenty",
    )
    parser.add_argument("--counted-loop", help=argparse.SUPPRESS)  # under callgrind
    args = parser.parse_args(argv)
    from asynctask.plugins import DISABLE_VARIABLE, load_plugins
    from bench.plan import REDIS, TEST_PLUGINS

    os.environ.setdefault(DISABLE_VARIABLE, TEST_PLUGINS)  # as the bench's children run

    uri = args.uri or REDIS
    transport = load_plugins().transport_class(uri)(uri)
    if args.counted_loop is not None:
        with transport:
            tracked, prefetch = args.counted_loop == "1", int(args.prefetch)
            _drain(transport, prefetch, 200, tracked, False)  # warm: connection, scripts
            _drain(transport, prefetch, args.tasks, tracked, False, counted=True)
        return 0
    if args.instructions:
        transport.close()
        for tracked in (True, False) if args.untracked else (True,):
            for prefetch in (int(p) for p in args.prefetch.split(",")):
                count = instructions(uri, prefetch, args.tasks, tracked)
                print(f"prefetch {prefetch}, tracked {tracked}: {count:,.0f} instructions a task")
        return 0
    costs = []
    with transport:
        for tracked in (True, False) if args.untracked else (True,):
            for prefetch in (int(p) for p in args.prefetch.split(",")):
                costs.append(measure(transport, prefetch, args.tasks, tracked))
                print(" | ".join(cells(costs[-1])), file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps([c.to_json() for c in costs]))
        return 0
    rows = [HEADER, *(cells(c) for c in costs)]
    print("\n".join("| " + " | ".join(r) + " |" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
