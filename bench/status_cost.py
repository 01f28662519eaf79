"""``python -m bench.status_cost``: what task status tracking costs a transport's drain.

The consumer's own loop, in this process, as a worker drives it (``reserve``, ``start``,
``ack`` with a ``null`` result), on a filled queue: with tracking on (the states written
with the consumer's calls) and off (``consumer.tracking = False``, as
``track_status = False`` sets it). This is the harshest ratio: no ``process()``, no
child process, nothing but the transport's own work per task. The drains run in pairs,
who goes first alternating (ABBA), and the median of each side is kept, as in the main
bench's row (``bench.paired``; 2 shared cores). With ``--before DIR`` (a
checkout of the transport's package source before issue 16, e.g. ``git archive``) a
third column drains with that code, in a subprocess, beside the two.

``--prefetch N`` takes N tasks a move (1 by default, the harshest; a worker's default
is 4, as in ``make bench``'s tracking row).

Example: ``python -m bench.status_cost --only redis --tasks 5000 --rounds 3``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from asynctask.testing.contract import open_transport
from bench import paired
from bench.plan import BACKENDS, unavailable, unique_name


def drain(uri: str, tasks: int, tracking: bool, prefetch: int = 1) -> float:
    """Tasks per second of one consumer draining ``tasks`` no-op tasks."""
    transport = open_transport(uri)
    queue = unique_name("status")
    try:
        for i in range(0, tasks, 1000):
            transport.submit_tasks(queue, [{"n": n} for n in range(i, min(i + 1000, tasks))])
        consumer = transport.consumer(queue, prefetch=prefetch)
        if not tracking:
            consumer.tracking = False
        done = 0
        started = time.perf_counter()
        while done < tasks:
            delivery = consumer.reserve(timeout=5)
            if delivery is None:
                raise RuntimeError(f"the queue ran dry after {done} of {tasks} tasks")
            if tracking:
                consumer.start(delivery)
            consumer.ack(delivery, "null" if tracking else None)
            done += 1
        consumer.close()  # sends the last ack
        return tasks / (time.perf_counter() - started)
    finally:
        transport.purge(queue)
        transport.close()


def _before(folder: Path, uri: str, tasks: int) -> float:
    """The same drain (tracking off: there was none) with the transport's old source."""
    env = {**os.environ, "PYTHONPATH": f"{folder}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    code = (
        "import sys, json; from bench.status_cost import drain; "
        f"print(json.dumps(drain({uri!r}, {tasks}, False)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="redis", help="transports (comma-separated)")
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=4, help="pairs of drains (ABBA)")
    parser.add_argument("--prefetch", type=int, default=1, help="tasks a move (1)")
    parser.add_argument("--before", type=Path, help="the transport's package source before")
    args = parser.parse_args()
    for name in args.only.split(","):
        why = unavailable(name)
        if why:
            print(f"{name}: skipped ({why})")
            continue
        uri = BACKENDS[name].uri(Path("/tmp"))
        run = functools.partial(drain, uri, args.tasks, prefetch=args.prefetch)
        pairs = paired.alternate(run, args.rounds)
        line = (
            f"{name}: tracking on {pairs.median_a:,.0f}/s, off {pairs.median_b:,.0f}/s, "
            f"on/off {pairs.ratio:.2f}x ({pairs.summary(args.tasks, 'on', 'off')})"
        )
        if args.before is not None:
            before = statistics.median(
                _before(args.before, uri, args.tasks) for _ in range(args.rounds)
            )
            line += f"; before issue 16 {before:,.0f}/s (off/before {pairs.median_b / before:.2f}x)"
        print(line, flush=True)


if __name__ == "__main__":
    main()
