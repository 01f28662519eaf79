"""Measure the filesys transport: drain rate by queue depth, and idle wake-up latency.

    .venv/bin/python packages/asynctask-filesys/scripts/bench_filesys.py [--depths 100,100000]

Drain: fill a queue (fsync off, to fill fast), then time one consumer taking and acking
every task (and get_task for comparison); a depth of 100 is refilled and drained again
until 20,000 tasks have been timed. Wake-up: a consumer waits in ``reserve``; another
process submits 200 tasks one at a time (fsync on), each stamped with
``time.monotonic()`` just before its ``submit_task``; latency is reserve's return minus
that stamp.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from typing import Any

from asynctask.testing.contract import open_transport


def _fill(uri: str, queue: str, depth: int) -> None:
    with open_transport(uri + "?fsync=false") as producer:
        for start in range(0, depth, 5000):
            producer.submit_tasks(queue, [{"n": n} for n in range(start, min(depth, start + 5000))])


def drain_rate(root: str, depth: int, how: str) -> float:
    """Tasks per second taken (and acked) from a queue ``depth`` deep, by one taker that
    stays open across rounds (so its set-up is not counted)."""
    uri = f"filesys:{root}"
    queue = f"{how}_{depth}"
    rounds = max(1, 20_000 // depth)
    elapsed = 0.0
    with open_transport(uri) as transport, transport.consumer(queue) as consumer:
        transport.get_task(queue)
        consumer.reserve(timeout=0)
        for _ in range(rounds):
            _fill(uri, queue, depth)
            start = time.perf_counter()
            if how == "reserve":
                for _ in range(depth):
                    delivery = consumer.reserve(timeout=5)
                    assert delivery is not None
                    consumer.ack(delivery)
            else:
                for _ in range(depth):
                    assert transport.get_task(queue) is not None
            elapsed += time.perf_counter() - start
    return rounds * depth / elapsed


def _submitter(uri: str, queue: str, count: int, ready: Any) -> None:
    with open_transport(uri) as producer:
        ready.wait()
        for n in range(count):
            time.sleep(0.02)
            producer.submit_task(queue, {"n": n, "sent": time.monotonic()})


def wake_latencies(root: str, count: int, query: str) -> list[float]:
    """Milliseconds from a submit in another process to the idle consumer's wake-up."""
    uri = f"filesys:{root}?{query}"
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=_submitter, args=(uri, "wake", count, ready))
    child.start()
    latencies = []
    with open_transport(uri) as transport, transport.consumer("wake") as consumer:
        consumer.reserve(timeout=0)  # folders made, watches set
        ready.set()
        for _ in range(count):
            delivery = consumer.reserve(timeout=10)
            assert delivery is not None
            latencies.append((time.monotonic() - delivery.payload["sent"]) * 1000)
            consumer.ack(delivery)
    child.join()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="100,100000")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        for how in ("reserve", "get_task"):
            for depth in (int(d) for d in args.depths.split(",")):
                rate = drain_rate(root, depth, how)
                print(f"drain {how:8} depth {depth:>7}: {rate:8.0f} tasks/s")
        for query in ("notify=inotify", "notify=inotify&fsync=false", "notify=poll"):
            ms = sorted(wake_latencies(root, 200, query))
            p99 = ms[int(len(ms) * 0.99) - 1]
            print(
                f"wake-up ({query}): p50 {statistics.median(ms):.2f} ms, p99 {p99:.2f} ms, "
                f"max {ms[-1]:.2f} ms over {len(ms)} submits"
            )


if __name__ == "__main__":
    main()
