"""The pgsql transport beside raw psycopg on the same server, in one process.

    .venv/bin/python packages/asynctask-pgsql/scripts/bench_pgsql.py [URI] [--rounds N] [--deep N]

The transport works in a schema of its own (``bench_<random>``), dropped at the end.

Each measure alternates ours and raw for several rounds and reports medians, since a
shared machine's commit latency drifts. Raw is psycopg on a plain ``(id BIGSERIAL,
payload JSONB)`` table, autocommit: INSERT one by one, multi-row INSERT, the ``DELETE ...
SKIP LOCKED RETURNING`` loop, and a LISTEN wake-up. Ours: submit_task, submit_tasks, one
consumer's reserve+ack loop, and a consumer woken by a submit. ``--deep`` also times the
consumer with that many tasks waiting (1,000,000 takes a minute to fill).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import uuid
from collections.abc import Callable

import psycopg

from asynctask_pgsql.transport import PgsqlTransport

ONE, BATCH, BATCHES, DRAIN, WAKES = 300, 1000, 5, 2000, 100


class Raw:
    """The least a plain client does for the same work."""

    def __init__(self, conninfo: str) -> None:
        self.conn = psycopg.connect(conninfo, autocommit=True)
        self.table = "bench_raw_" + uuid.uuid4().hex[:8]
        self.conn.execute(
            f"CREATE TABLE {self.table} (id BIGSERIAL PRIMARY KEY, payload JSONB NOT NULL)"
        )
        self.take = (
            f"DELETE FROM {self.table} WHERE id = (SELECT id FROM {self.table} ORDER BY id "
            "FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING payload"
        )

    def one(self, n: int) -> None:
        for i in range(n):
            self.conn.execute(
                f"INSERT INTO {self.table} (payload) VALUES (%s)",
                (json.dumps({"n": i}),),
                prepare=True,
            )

    def batch(self, n: int) -> None:
        values = ", ".join(["(%s)"] * n)
        self.conn.execute(
            f"INSERT INTO {self.table} (payload) VALUES {values}",
            [json.dumps({"n": i}) for i in range(n)],
        )

    def drain(self, n: int) -> None:
        for _ in range(n):
            assert self.conn.execute(self.take, prepare=True).fetchone() is not None

    def wake(self, conninfo: str, count: int) -> list[float]:
        listener = psycopg.connect(conninfo, autocommit=True)
        listener.execute(f"LISTEN {self.table}")
        got: list[float] = []

        def listen() -> None:
            while len(got) < count:
                for _ in listener.notifies(timeout=10, stop_after=1):
                    pass
                while listener.execute(self.take, prepare=True).fetchone() is not None:
                    got.append(time.perf_counter())

        return _wakes(
            listen,
            lambda: self.conn.execute(
                f"WITH r AS (INSERT INTO {self.table} (payload) VALUES ('{{}}') RETURNING id)"
                " SELECT pg_notify(%s, '') FROM r",
                (self.table,),
                prepare=True,
            ),
            got,
            count,
        )

    def close(self) -> None:
        self.conn.execute(f"DROP TABLE {self.table}")
        self.conn.close()


def _wakes(
    listen: Callable[[], None], send: Callable[[], object], got: list[float], count: int
) -> list[float]:
    thread = threading.Thread(target=listen)
    thread.start()
    time.sleep(0.3)
    sent = []
    for _ in range(count):
        sent.append(time.perf_counter())
        send()
        deadline = time.monotonic() + 5
        while len(got) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.0002)
        time.sleep(0.005)
    thread.join(10)
    return [(g - s) * 1000 for s, g in zip(sent, got, strict=False)]


def _rate(fn: Callable[[], object], count: int) -> float:
    start = time.perf_counter()
    fn()
    return count / (time.perf_counter() - start)


def _drain(
    transport: PgsqlTransport, queue: str, n: int, prefetch: int = 1, tracking: bool = False
) -> None:
    """A run loop's calls: with ``tracking``, ``start`` each task and ack with a result."""
    with transport.consumer(queue, prefetch=prefetch) as consumer:
        consumer.tracking = tracking
        for _ in range(n):
            delivery = consumer.reserve(timeout=5)
            assert delivery is not None
            if tracking:
                assert consumer.start(delivery) == "run"
                consumer.ack(delivery, "null")
            else:
                consumer.ack(delivery)


def _tracking_cost(transport: PgsqlTransport, queue: str, prefetch: int) -> tuple[float, float]:
    """Drain rates (on, off) with status tracking on and off, same tasks, same run. Off
    as a worker with ``track_status = False`` runs: its queue marked untracked, so the
    submits write no status rows either."""
    store = transport._state_store()
    rates = []
    for tracking in (True, False):
        store.set_tracking(queue, tracking)
        transport.submit_tasks(queue, [{"n": i} for i in range(DRAIN)])
        rates.append(
            _rate(lambda on=tracking: _drain(transport, queue, DRAIN, prefetch, on), DRAIN)
        )
    store.set_tracking(queue, True)
    return rates[0], rates[1]


def _our_wakes(transport: PgsqlTransport, queue: str, count: int) -> list[float]:
    got: list[float] = []

    def listen() -> None:
        with transport.consumer(queue) as consumer:
            while len(got) < count:
                delivery = consumer.reserve(timeout=10)
                if delivery is not None:
                    got.append(time.perf_counter())
                    consumer.ack(delivery)

    return _wakes(listen, lambda: transport.submit_task(queue, {}), got, count)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("uri", nargs="?", default="pgsql://127.0.0.1/test")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--deep", type=int, default=0)
    args = parser.parse_args()
    # A schema of its own, dropped afterwards: a fresh table, as the raw side has.
    schema = "bench_" + uuid.uuid4().hex[:8]
    uri = args.uri + ("&" if "?" in args.uri else "?") + f"schema={schema}"
    transport = PgsqlTransport(uri)
    raw = Raw(transport.server.conninfo)
    queue = "bench_" + uuid.uuid4().hex[:8]
    transport.purge(queue)  # migrates, opens the pool
    results: dict[str, list[float]] = {}

    def note(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)

    try:
        batch = [{"n": i} for i in range(BATCH)]

        def ours_one() -> None:
            for i in range(ONE):
                transport.submit_task(queue, {"n": i})

        def ours_batch() -> None:
            for _ in range(BATCHES):
                transport.submit_tasks(queue, batch)

        def raw_batch() -> None:
            for _ in range(BATCHES):
                raw.batch(BATCH)

        for _ in range(args.rounds):
            note("submit one: ours", _rate(ours_one, ONE))
            note("submit one: raw", _rate(lambda: raw.one(ONE), ONE))
            note("submit batch: ours", _rate(ours_batch, BATCH * BATCHES))
            note("submit batch: raw", _rate(raw_batch, BATCH * BATCHES))
            # Empty both tables and VACUUM them, as autovacuum would between rounds (the
            # test server runs without it; dead index entries would tilt the drain).
            transport.purge(queue)
            raw.conn.execute(f"DELETE FROM {raw.table}")
            raw.conn.execute(f"VACUUM {schema}.asynctask_queue, {raw.table}")
            transport.submit_tasks(queue, [{"n": i} for i in range(DRAIN)])
            raw.batch(DRAIN)
            note("drain: ours", _rate(lambda: _drain(transport, queue, DRAIN), DRAIN))
            note("drain: raw", _rate(lambda: raw.drain(DRAIN), DRAIN))
            transport.submit_tasks(queue, [{"n": i} for i in range(DRAIN)])
            rate = _rate(lambda: _drain(transport, queue, DRAIN, 8), DRAIN)
            note("drain, prefetch 8: ours", rate)
            for prefetch in (1, 4):
                on, off = _tracking_cost(transport, queue, prefetch)
                note(f"drain p{prefetch}, tracking on", on)
                note(f"drain p{prefetch}, tracking off", off)
                note(f"drain p{prefetch}, on/off x", on / off)
        note_all = {
            "wake-up ms p50: ours": _our_wakes(transport, queue, WAKES),
            "wake-up ms p50: raw": raw.wake(transport.server.conninfo, WAKES),
        }
        for name, values in note_all.items():
            results[name] = [statistics.median(values)]
            results[name.replace("p50", "p99")] = [sorted(values)[int(len(values) * 0.99) - 1]]
        if args.deep:
            for depth in (10, args.deep):
                transport.purge(queue)
                for start in range(0, depth + DRAIN, 10_000):
                    count = min(10_000, depth + DRAIN - start)
                    transport.submit_tasks(queue, [{"n": i} for i in range(count)])
                raw.conn.execute(f"ANALYZE {schema}.asynctask_queue")
                rate = _rate(lambda: _drain(transport, queue, DRAIN), DRAIN)
                note(f"drain at depth {depth:,}", rate)
    finally:
        transport.close()
        raw.conn.execute(f"DROP SCHEMA {schema} CASCADE")
        raw.close()
    for name, values in results.items():
        unit = "" if "ms" in name else "/s"
        unit = "" if "ms" in name or " x" in name else unit
        print(
            f"{name:28} {statistics.median(values):10,.2f}{unit}   rounds: "
            + ", ".join(f"{v:,.0f}" if v > 10 else f"{v:.2f}" for v in values)
        )


if __name__ == "__main__":
    main()
