"""``python -m bench.profile TRANSPORT``: where a drain's worker child spends its time.

Fills a queue, runs ``asynctask workers --halt-when-empty`` (1 child, the no-op worker)
under py-spy with ``--idle`` (so time spent waiting on the server shows), and prints the
child's functions by share of samples: inclusive (the function and what it calls) and
self (the innermost frame). py-spy is not a dependency: install it outside the project,
e.g. ``uv venv /tmp/pyspy && uv pip install --python /tmp/pyspy py-spy``, and pass
``--py-spy /tmp/pyspy/bin/py-spy``.

Example: python -m bench.profile pgsql --count 5000 --py-spy /tmp/pyspy/bin/py-spy
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from asynctask.plugins import DISABLE_VARIABLE, load_plugins
from bench import ours
from bench.plan import BACKENDS, plugins_off, unique_name

_FRAME = re.compile(r"^(?P<name>.+?) \((?P<where>[^()]*)\)$")


def summarize(raw: str, top: int, root: str = "<module> (asynctask/child.py") -> str:
    """One main thread's inclusive and self shares from py-spy's ``--format raw`` text.

    ``root`` picks the thread: a frame it starts with (the worker child's by default).
    """
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = stack.split(";")
        if not any(f.startswith(root) for f in frames):
            continue  # another process, or a helper thread
        count = int(count_text)
        total += count
        names = [_short(f) for f in frames if not f.startswith("process ")]
        for name in set(names):
            inclusive[name] += count
        if names:
            own[names[-1]] += count
    if not total:
        return "no samples of the main thread"
    lines = [f"{total} samples of the main thread", "", "inclusive:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)]
    lines += ["", "self:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    where = match["where"].rsplit(":", 1)[0]
    return f"{match['name']} ({where})"


def submit_loop(uri: str, count: int, batch: int) -> None:
    """Submit ``count`` tasks one by one, or ``batch`` at a time (what is profiled)."""
    transport = load_plugins().transport_class(uri)(uri)
    queue = unique_name("bench_profile")
    with transport:
        if batch > 1:
            ours.submit_batch(transport, queue, ours.payloads(count), batch)
        else:
            ours.submit_one(transport, queue, ours.payloads(count))
        transport.purge(queue)


def main(argv: list[str]) -> int:
    """Profile one drain (or submit loop); print the summary."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("transport", choices=[n for n, b in BACKENDS.items() if b.multiprocess])
    parser.add_argument("--measure", choices=["drain", "submit", "batch"], default="drain")
    parser.add_argument("--batch", type=int, default=1000, help="tasks per batch (1000)")
    parser.add_argument("--count", type=int, default=5000, help="tasks (5000)")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--rate", type=int, default=250, help="samples per second (250)")
    parser.add_argument("--loop", metavar="URI", help=argparse.SUPPRESS)  # the profiled side
    args = parser.parse_args(argv)
    os.environ[DISABLE_VARIABLE] = plugins_off()  # as the bench's processes run
    if args.loop:
        submit_loop(args.loop, args.count, args.batch)
        return 0
    backend = BACKENDS[args.transport]
    folder = Path(tempfile.mkdtemp(prefix="asynctask-profile-"))
    uri = backend.uri(folder)
    out = folder / "profile.txt"
    spy = [args.py_spy, "record", "--subprocesses", "--idle", "--format", "raw"]
    spy += ["--rate", str(args.rate), "-o", str(out), "--"]
    if args.measure in ("submit", "batch"):
        batch = args.batch if args.measure == "batch" else 1
        loop = [sys.executable, "-m", "bench.profile", args.transport, "--loop", uri]
        loop += ["--count", str(args.count), "--batch", str(batch)]
        began = time.monotonic()
        subprocess.run([*spy, *loop], check=True, capture_output=True)
        seconds = time.monotonic() - began
        how = "one by one" if batch == 1 else f"in batches of {batch}"
        print(f"{args.transport}: {args.count} submits {how} under py-spy ({seconds:.1f} s)")
        print(f"(raw profile in {out})\n")
        print(summarize(out.read_text(), args.top, "submit_loop (bench/profile.py"))
        return 0
    transport = load_plugins().transport_class(uri)(uri)
    queue = unique_name("bench_profile")
    with transport:
        ours.fill(transport, queue, args.count)
        workers = ours.WorkersCommand(uri, queue, 1, str(folder / "ledger"), folder, halt=True)
        began = time.monotonic()
        subprocess.run(
            [*spy, *workers.command], cwd=folder, env=workers.env, check=True, capture_output=True
        )
        seconds = time.monotonic() - began
        transport.purge(queue)
    drained = ours.drain_rate(str(folder / "ledger"), 0.0)
    print(f"{args.transport}: {drained.done} tasks at {drained.rate:,.0f}/s under py-spy")
    print(f"({seconds:.1f} s in all, raw profile in {out})\n")
    print(summarize(out.read_text(), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
