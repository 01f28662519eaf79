"""What a prefetched start's Sync round trip (``PgsqlConsumer._hear_cancels``) costs.

    .venv/bin/python packages/asynctask-pgsql/scripts/bench_prefetched_start.py [URI]

Drains 1,000 tasks with prefetch 4 and status tracking on, alternating three ways in one
run (7 rounds, medians): the Sync round trip before a fast start (as shipped), the old
non-blocking read of the notifications already received (which let a cancel that
returned before the start lose), and a START statement per task. Works in a schema of
its own, dropped at the end.
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from asynctask import get_transport
from asynctask_pgsql import consumer as cm

sys.path.insert(0, str(Path(__file__).parent))
from bench_pgsql import _drain

N, ROUNDS = 1000, 7


def _old_read(self: Any, conn: Any) -> None:
    conn.pgconn.consume_input()
    self._absorb(conn, block=False)


def main() -> None:
    base = sys.argv[1] if len(sys.argv) > 1 else "pgsql://127.0.0.1/test"
    schema = "bench_" + uuid.uuid4().hex[:8]
    transport = get_transport(f"{base}{'&' if '?' in base else '?'}schema={schema}")
    barrier, later = cm.PgsqlConsumer._hear_cancels, cm.PgsqlConsumer._start_later
    ways: dict[str, tuple[Any, Any]] = {
        "sync round trip": (barrier, later),
        "old read": (_old_read, later),
        "START per task": (barrier, lambda self, delivery: False),
    }
    rates: dict[str, list[float]] = {name: [] for name in ways}
    try:
        for _ in range(ROUNDS):
            for name, (hear, start_later) in ways.items():
                cm.PgsqlConsumer._hear_cancels = hear  # type: ignore[method-assign]
                cm.PgsqlConsumer._start_later = start_later  # type: ignore[method-assign]
                transport.submit_tasks("bench", [{"n": i} for i in range(N)])
                began = time.perf_counter()
                _drain(transport, "bench", N, 4, True)  # type: ignore[arg-type]
                rates[name].append(N / (time.perf_counter() - began))
    finally:
        transport.close()
        with psycopg.connect(transport.server.conninfo, autocommit=True) as conn:  # type: ignore[attr-defined]
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
    for name, values in rates.items():
        rounds = ", ".join(f"{v:.0f}" for v in values)
        print(f"{name:16} median {statistics.median(values):8.0f}/s  rounds {rounds}")


if __name__ == "__main__":
    main()
