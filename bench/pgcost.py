"""``python -m bench.pgcost``: what one task of a pgsql drain costs, by prefetch (issue 20).

Counts the machine's load moves little, for the worker child's run loop (the no-op
``bench_noop`` worker, in this process, as ``bench/loopcost.py`` runs it) draining a
filled queue on a private PostgreSQL (``chaos.private_postgres``, fsync off) that loads
``pg_stat_statements`` with ``track_planning``: per task, the statements sent (round
trips), their server execution and planning microseconds, buffers and WAL bytes
(``pg_stat_statements``), the CPU of every process of that server (``/proc``: the
backend's parse, bind, locks and commit too, which the execution time leaves out) and
of this process. Prefetches alternate (A B B A ...), each round on a fresh queue of one
schema, so every prefetch meets the same dead tuples and the same load.

Example: ``python -m bench.pgcost --tasks 6000 --rounds 4 --prefetch 16,32,64``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from bench.hot import private_server
from chaos.private_postgres import PrivatePostgres

_TICK = os.sysconf("SC_CLK_TCK")
#: bare Syncs (round trips with no statement, ``PgsqlConsumer._hear_cancels``) a drain
SYNCS: list[int] = []


class _CountingPostgres(PrivatePostgres):
    """A private server with pg_stat_statements (planning too) and, as the shared one,
    autovacuum off."""

    def _options(self) -> str:
        return super()._options() + (
            " -c shared_preload_libraries=pg_stat_statements"
            " -c pg_stat_statements.track_planning=on -c autovacuum=off"
        )


def _server_cpu(server: PrivatePostgres) -> float:
    """CPU seconds of the private server's postmaster and every process it started."""
    head = (server.data / "postmaster.pid").read_text().split()[0]
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if entry.name == head or fields[1] == head:  # pid, or its parent's
            total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def _stats(conninfo: str) -> dict[str, tuple[float, ...]]:
    """Per statement kind: calls, exec ms, plan ms, buffers, WAL bytes (cumulative)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT query, calls, total_exec_time, total_plan_time,"
            " shared_blks_hit + shared_blks_read, wal_bytes FROM pg_stat_statements"
            " WHERE query NOT LIKE '%pg_stat_statements%'"
        ).fetchall()
    kinds: dict[str, list[float]] = defaultdict(lambda: [0.0] * 5)
    for query, *values in rows:
        into = kinds[_kind(query)]
        for n, value in enumerate(values):
            into[n] += float(value)
    return {kind: tuple(values) for kind, values in kinds.items()}


def _kind(query: str) -> str:
    if "taken AS" in query:
        return "RESERVE"
    if "asynctask_start" in query:
        return "START"
    words = " ".join(query.split())[:60]
    return words


def drain(
    uri: str,
    tasks: int,
    prefetch: int,
    untracked: bool,
    counting: Callable[[bool], None] = lambda on: None,
) -> tuple[float, float, float]:
    """Fill a queue and drain it with a worker child's run loop at ``prefetch``: (wall
    seconds, this process's CPU seconds, tasks run); ``counting(True)`` right before the
    run loop, ``counting(False)`` as its consumer closes (the fill and the purge left
    out)."""
    os.environ["BENCH_LEDGER"] = os.devnull
    from asynctask.api import get_transport
    from asynctask.liveness import new_owner
    from asynctask.reports import ReportWriter
    from asynctask.runner import LoopOptions, run_loop
    from bench.workers import BenchNoopWorker

    transport = get_transport(uri)
    queue = f"bench_cost_{uuid.uuid4().hex[:10]}"
    if untracked:
        transport.state().set_tracking(queue, False)
    items = [{"n": n, "sent": 0.0} for n in range(tasks)]
    for i in range(0, tasks, 1000):
        transport.submit_tasks(queue, items[i : i + 1000])
    worker = BenchNoopWorker()
    worker.setup()
    null = os.open(os.devnull, os.O_WRONLY)
    report = ReportWriter(null)
    extra: dict[str, Any] = {"on_start": report.started, "on_settled": report.settled}
    extra.update(on_idle=report.flush, owner=new_owner())
    if untracked:
        extra["track_status"] = False
    options = LoopOptions(halt_when_empty=True, prefetch=prefetch, **extra)
    from asynctask_pgsql.consumer import PgsqlConsumer

    syncs = [0]
    hear = PgsqlConsumer._hear_cancels

    def counted_hear(self: PgsqlConsumer, conn: Any) -> None:
        syncs[0] += 1
        hear(self, conn)

    PgsqlConsumer._hear_cancels = counted_hear  # type: ignore[method-assign]
    # the server's CPU is read before the consumer closes: its backend's goes with it
    close = PgsqlConsumer.close

    def counted_close(self: PgsqlConsumer) -> None:
        counting(False)
        close(self)

    PgsqlConsumer.close = counted_close  # type: ignore[method-assign]
    counting(True)
    cpu, began = time.process_time(), time.perf_counter()
    done = run_loop(worker, transport, queue, options).processed
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu  # the close in it
    PgsqlConsumer._hear_cancels = hear  # type: ignore[method-assign]
    PgsqlConsumer.close = close  # type: ignore[method-assign]
    SYNCS.append(syncs[0])
    worker.teardown()
    os.close(null)
    transport.purge(queue)
    transport.close()
    return wall, cpu, float(done)


def main(argv: list[str] | None = None) -> None:
    """Alternating rounds over the prefetches; a line per round, medians at the end."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--prefetch", default="16,32")
    parser.add_argument("--untracked", action="store_true")
    parser.add_argument("--uri", help="an existing private server's URI (no server CPU then)")
    args = parser.parse_args(argv)
    from asynctask.plugins import load_plugins

    load_plugins([])
    prefetches = [int(p) for p in args.prefetch.split(",")]
    server = private_server(_CountingPostgres)
    try:
        _run(server, args, prefetches)
    finally:
        server.remove()


class _Counter:
    """The server's CPU and statements while the run loop runs (``drain``'s callback)."""

    def __init__(self, server: PrivatePostgres) -> None:
        self.server = server
        self.cpu = 0.0
        self.stats: dict[str, tuple[float, ...]] = {}

    def counting(self, on: bool) -> None:
        if on:
            with psycopg.connect(self.server.conninfo, autocommit=True) as conn:
                conn.execute("SELECT pg_stat_statements_reset()")
            self.cpu = -_server_cpu(self.server)
        else:
            self.cpu += _server_cpu(self.server)
            self.stats = _stats(self.server.conninfo)


def _run(server: PrivatePostgres, args: argparse.Namespace, prefetches: list[int]) -> None:
    uri = server.uri(schema="pgcost", recovery_seconds="600")
    drain(uri, 200, prefetches[0], args.untracked)  # the schema made, the plans warm
    lines: dict[int, list[dict[str, float]]] = defaultdict(list)
    for n in range(args.rounds):
        order = prefetches if n % 2 == 0 else list(reversed(prefetches))
        for prefetch in order:
            counter = _Counter(server)
            wall, cpu, done = drain(uri, args.tasks, prefetch, args.untracked, counter.counting)
            server_cpu, stats = counter.cpu, counter.stats
            mine = {k: v for k, v in stats.items() if k != "SELECT pg_stat_statements_reset()"}
            calls = sum(v[0] for v in mine.values())
            line = {
                "rate": done / wall,
                "child_us": cpu / done * 1e6,
                "server_cpu_us": server_cpu / done * 1e6,
                "statements": calls / done,
                "syncs": SYNCS[-1] / done,
                "exec_us": sum(v[1] for v in mine.values()) / done * 1e3,
                "plan_us": sum(v[2] for v in mine.values()) / done * 1e3,
                "buffers": sum(v[3] for v in mine.values()) / done,
                "wal": sum(v[4] for v in mine.values()) / done,
            }
            lines[prefetch].append(line)
            kinds = ", ".join(
                f"{k[:40]} x{v[0]:.0f}" for k, v in sorted(mine.items(), key=lambda kv: -kv[1][0])
            )
            print(
                f"round {n + 1} prefetch {prefetch:3d}: "
                + " ".join(f"{k} {v:,.2f}" for k, v in line.items())
                + f" load {os.getloadavg()[0]:.1f} [{kinds}]",
                flush=True,
            )
    for prefetch, rounds in lines.items():
        medians = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        print(
            f"prefetch {prefetch:3d} medians: "
            + " ".join(f"{k} {v:,.2f}" for k, v in medians.items())
        )


if __name__ == "__main__":
    main()
