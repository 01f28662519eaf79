"""``python -m bench.hooks``: what the lifecycle hooks and the metrics plugin cost.

Two measures, written to ``docs/observability-cost.md`` (``--docs``) and printed:

* **per event**, in this process: ``events.task_started`` + ``events.task_finished`` for
  one task, with no implementation, with the Prometheus recorder writing its multiprocess
  files, and the Prometheus text the supervisor renders per scrape;
* **the drain** of ``asynctask workers --halt-when-empty`` (one child, the no-op bench
  worker) on a filled queue: plugins switched off, plugins installed but unused (no
  ``--metrics-port``), and with ``--metrics-port``. With ``--before DIR`` (a checkout of
  core without the hooks, e.g. ``git archive main packages/asynctask-core/src``) it also
  drains with that core first on ``PYTHONPATH``. Rounds alternate and the best is kept,
  as in the main bench: the machine has 2 shared cores.

Example: ``python -m bench.hooks --only filesys,redis --tasks 5000 --rounds 3``.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from asynctask.api import get_transport
from asynctask.testing import clean_environment, workers_command
from bench import ledger
from bench.ours import ROOT, drain_rate, fill
from bench.plan import BACKENDS, TEST_PLUGINS, unavailable, unique_name

ALL_PLUGINS = f"{TEST_PLUGINS},prometheus,otel"


@dataclass
class Config:
    """One way of running the drain."""

    label: str
    disable: str
    metrics: bool = False
    core: Path | None = None


@dataclass
class Row:
    """The best drain of one configuration on one transport."""

    transport: str
    label: str
    rates: list[float] = field(default_factory=list)
    #: CPU microseconds per task of the worker child (load changes it little)
    cpu: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return max(self.rates) if self.rates else 0.0

    @property
    def best_cpu(self) -> float:
        return min(self.cpu) if self.cpu else 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def drain_once(name: str, config: Config, tasks: int, folder: Path) -> tuple[float, float]:
    """Fill a queue, drain it with one child; tasks per second and child CPU us per task.

    The CPU time is the child's from its first task's ``process()`` to its last one's
    (``bench_cpu`` notes it): start-up and idle waits are left out, and a loaded machine
    moves it far less than the wall-clock rate.
    """
    backend = BACKENDS[name]
    uri, fill_uri = backend.uri(folder), backend.fill_uri(folder)
    queue = unique_name("hooks")
    fill(get_transport(fill_uri), queue, tasks)
    path = str(folder / f"{queue}.ledger")
    args = ["--import", "bench.workers", "-q", "--halt-when-empty"]
    if config.metrics:
        args += ["--metrics-port", str(_free_port())]
    command = workers_command(uri, {queue: {"worker": "bench_cpu"}}, *args)
    cpu_path = folder / f"{queue}.cpu"
    env: dict[str, str] = clean_environment(
        **{
            ledger.LEDGER_VARIABLE: path,
            "ASYNCTASK_DISABLE_PLUGINS": config.disable,
            "BENCH_CPU": str(cpu_path),
        }
    )
    paths = [str(ROOT)] + ([str(config.core)] if config.core else [])
    env["PYTHONPATH"] = os.pathsep.join(reversed(paths))
    launched = time.time()
    with open(folder / f"{queue}.log", "wb") as log:
        done = subprocess.run(command, env=env, cwd=folder, stdout=log, stderr=log, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{config.label}: workers exited {done.returncode} (see {log.name})")
    count, first, last = cpu_path.read_text().split()
    cpu = (float(last) - float(first)) / (int(count) - 1) * 1e6
    return drain_rate(path, launched).rate, cpu


def per_event(repeat: int = 200_000) -> dict[str, float]:
    """Nanoseconds per task of the events facade, and microseconds per scrape render."""
    from asynctask import events
    from asynctask.plugins import load_plugins
    from asynctask.transport import Delivery
    from asynctask.worker import AsyncTaskWorker

    class Noop(AsyncTaskWorker):
        name = "noop"

        def process(self, payload: dict[str, object]) -> None:
            return None

    worker, delivery = Noop(), Delivery("0" * 32, "q", {}, 1)

    def run(n: int) -> float:
        began = time.perf_counter_ns()
        for _ in range(n):
            events.task_started(worker, delivery)
            events.task_finished(worker, delivery, "succeeded", None)
        return (time.perf_counter_ns() - began) / n

    figures: dict[str, float] = {}
    events.bind(None)
    figures["no implementation (ns/task)"] = min(run(repeat) for _ in range(3))
    folder = tempfile.mkdtemp(prefix="bench-hooks-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    os.environ["ASYNCTASK_DISABLE_PLUGINS"] = f"{TEST_PLUGINS},otel"
    registry = load_plugins()
    figures["prometheus recording (ns/task)"] = min(run(repeat // 10) for _ in range(3))
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    scrape_registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(scrape_registry, path=folder)  # type: ignore[no-untyped-call]
    began = time.perf_counter_ns()
    for _ in range(200):
        generate_latest(scrape_registry)
    figures["render a scrape of one child's files (us)"] = (
        (time.perf_counter_ns() - began) / 200 / 1000
    )
    from asynctask.plugins import reset_plugins

    del registry
    reset_plugins()
    del os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.environ["ASYNCTASK_DISABLE_PLUGINS"] = f"{TEST_PLUGINS},prometheus"
    load_plugins()
    figures["otel, no SDK configured (ns/task)"] = min(run(repeat // 10) for _ in range(3))
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    figures["otel, SDK with in-memory exporter (ns/task)"] = min(
        run(repeat // 20) for _ in range(3)
    )
    reset_plugins()
    del os.environ["ASYNCTASK_DISABLE_PLUGINS"]
    return figures


def render(figures: Mapping[str, float], rows: list[Row], tasks: int, command: str) -> str:
    """The Markdown report."""
    lines = [
        "# What watching costs: lifecycle hooks and the Prometheus plugin",
        "",
        f"From `{command}` (2 shared cores; best of the rounds).",
        "",
        "## Per task, in one process",
        "",
        "| what | cost |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {value:,.0f} |" for name, value in figures.items()]
    lines += [
        "",
        f"## Drain of {tasks:,} no-op tasks, `asynctask workers --halt-when-empty`, one child",
        "",
        "CPU is the worker child's (user + system) per task, from its first task to its "
        "last (start-up and idle waits left out), the least of the rounds: what a "
        "configuration costs whatever else the machine is doing. The wall-clock rate (best "
        "round, first to last task) moves with the load of the shared machine.",
        "",
        "| transport | configuration | CPU us/task | vs plugins off | tasks/s | rounds (tasks/s) |",
        "|---|---|---:|---:|---:|---|",
    ]
    base: dict[str, float] = {r.transport: r.best_cpu for r in rows if r.label == "plugins off"}
    for r in rows:
        extra = r.best_cpu - base.get(r.transport, r.best_cpu)
        rounds = ", ".join(f"{x:,.0f}" for x in r.rates)
        lines.append(
            f"| {r.transport} | {r.label} | {r.best_cpu:,.0f} | {extra:+,.0f} us | "
            f"{r.best:,.0f} | {rounds} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """Measure and print; write the report with ``--docs``."""
    parser = argparse.ArgumentParser(prog="python -m bench.hooks", description=__doc__)
    parser.add_argument("--only", default="filesys,redis", help="transports (comma-separated)")
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", type=Path, help="a core src folder without the hooks")
    parser.add_argument("--docs", type=Path, help="write observability-cost.md here")
    args = parser.parse_args(argv)
    configs = [
        Config("plugins off", ALL_PLUGINS),
        Config("plugins installed, no --metrics-port", TEST_PLUGINS),
        Config("--metrics-port (prometheus recording)", TEST_PLUGINS, metrics=True),
    ]
    if args.before is not None:
        configs.insert(0, Config("core before the hooks", ALL_PLUGINS, core=args.before))
    figures = per_event()
    for name, value in figures.items():
        print(f"{name}: {value:,.1f}", file=sys.stderr)
    rows: list[Row] = []
    folder = Path(tempfile.mkdtemp(prefix="bench-hooks-"))
    for name in args.only.split(","):
        why = unavailable(name)
        if why or not BACKENDS[name].multiprocess:
            print(f"{name}: skipped ({why or 'one process only'})", file=sys.stderr)
            continue
        mine = [Row(name, c.label) for c in configs]
        for round_ in range(args.rounds):
            order = list(zip(configs, mine, strict=True))
            if round_ % 2:
                order.reverse()
            for config, row in order:
                rate, cpu = drain_once(name, config, args.tasks, folder)
                row.rates.append(rate)
                row.cpu.append(cpu)
                print(
                    f"{name} {config.label}: {rate:,.0f}/s, {cpu:,.1f} us CPU/task", file=sys.stderr
                )
        rows += mine
    command = "python -m bench.hooks " + " ".join(argv)
    text = render(figures, rows, args.tasks, command)
    print(text)
    if args.docs is not None:
        (args.docs / "observability-cost.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
