"""``python -m bench.status_cost``: what task status tracking costs a transport's drain.

The consumer's own loop, in this process, as a worker drives it (``reserve``, ``start``,
``ack`` with a ``null`` result), on a filled queue: with tracking on (the states written
with the consumer's calls) and off (``consumer.tracking = False``, as
``track_status = False`` sets it). This is the harshest ratio: no ``process()``, no
child process, nothing but the transport's own work per task. Rounds alternate and the
best of each is kept, as in the main bench (2 shared cores). With ``--before DIR`` (a
checkout of the transport's package source before issue 16, e.g. ``git archive``) a
third column drains with that code, in a subprocess, beside the two.

``--prefetch N`` takes N tasks a move (1 by default, the harshest; a worker's default
is 4, as in ``make bench``'s tracking row).

Example: ``python -m bench.status_cost --only redis --tasks 5000 --rounds 3``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from asynctask.testing.contract import open_transport
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
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prefetch", type=int, default=1, help="tasks a move (1)")
    parser.add_argument("--before", type=Path, help="the transport's package source before")
    args = parser.parse_args()
    for name in args.only.split(","):
        why = unavailable(name)
        if why:
            print(f"{name}: skipped ({why})")
            continue
        uri = BACKENDS[name].uri(Path("/tmp"))
        on = off = before = 0.0
        for _ in range(args.rounds):
            off = max(off, drain(uri, args.tasks, False, args.prefetch))
            on = max(on, drain(uri, args.tasks, True, args.prefetch))
            if args.before is not None:
                before = max(before, _before(args.before, uri, args.tasks))
        line = f"{name}: tracking off {off:,.0f}/s, on {on:,.0f}/s, on/off {on / off:.2f}x"
        if before:
            line += f"; before issue 16 {before:,.0f}/s (off/before {off / before:.2f}x)"
        print(line, flush=True)


if __name__ == "__main__":
    main()
