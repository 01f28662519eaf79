"""``python bench/submitcost.py URI``: instructions per ``submit_task`` of this process.

Under ``valgrind --tool=callgrind`` (``--instructions``), submits one by one to a new
queue (marked untracked first with ``--untracked``, where the commit knows of tracking,
so that its submits write no status) and counts only the loop, after 50 submits that
load the script and fill the caches: a figure the machine's load does not move. It runs
under either tree's interpreter, so that two commits compare (as ``bench/loopcost.py``)::

    /tmp/base/.venv/bin/python bench/submitcost.py --tree /tmp/base --instructions redis://...
    .venv/bin/python bench/submitcost.py --tree . --instructions --untracked redis://...

Without ``--instructions``: cProfile's Python calls per submit, by function.
"""

from __future__ import annotations

import sys

# run as a script: bench/ itself is not a place to import from (its profile.py would
# shadow the standard library's, which cProfile imports)
sys.path[:] = [p for p in sys.path if not p.rstrip("/").endswith("/bench")]

import argparse  # noqa: E402
import cProfile  # noqa: E402
import os  # noqa: E402
import pstats  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402


def _callgrind(on: bool) -> None:
    command = ["callgrind_control", "-i", "on" if on else "off", str(os.getpid())]
    subprocess.run(command, capture_output=True, check=True)


def submits(uri: str, count: int, untracked: bool, counted: bool, top: int) -> None:
    """Submit ``count`` tasks one by one (as ``bench.probe --serve``); counted or profiled."""
    from asynctask.plugins import load_plugins

    transport = load_plugins().transport_class(uri)(uri)
    queue = f"bench_submit_{uuid.uuid4().hex[:10]}"
    store = getattr(transport, "state", None)  # a commit before status tracking: none
    if untracked and store is not None:
        store().set_tracking(queue, False)
    try:
        for payload in [{"n": n, "sent": 0.0} for n in range(50)]:  # script, caches
            transport.submit_task(queue, payload)
        items = [{"n": n, "sent": 0.0} for n in range(count)]
        if counted:
            _callgrind(True)
            for payload in items:
                transport.submit_task(queue, payload)
            _callgrind(False)
        else:
            profile = cProfile.Profile()
            profile.enable()
            for payload in items:
                transport.submit_task(queue, payload)
            profile.disable()
            pstats.Stats(profile).sort_stats("tottime").print_stats(top)
    finally:
        transport.purge(queue)
        transport.close()


def main(argv: list[str]) -> int:
    """Count (under callgrind, in a child process) or profile the submits."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("uri")
    parser.add_argument("--tree", type=Path, required=True)
    parser.add_argument("--submits", type=int, default=2000)
    parser.add_argument("--untracked", action="store_true")
    parser.add_argument("--instructions", action="store_true")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--counted", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.counted or not args.instructions:
        submits(args.uri, args.submits, args.untracked, args.counted, args.top)
        return 0
    command = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
    command += ["--callgrind-out-file=/dev/null", sys.executable, __file__, args.uri]
    command += ["--tree", str(args.tree), "--submits", str(args.submits), "--counted"]
    command += ["--untracked"] if args.untracked else []
    env = dict(os.environ, PYTHONPATH=str(args.tree.resolve()))
    env["ASYNCTASK_DISABLE_PLUGINS"] = "testworkers_hooks,testworkers_lifecycle,otel,prometheus,web"
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        print(done.stderr[-3000:], file=sys.stderr)
        return 1
    print(f"{args.uri} {args.tree}: {int(found[1]) / args.submits:,.0f} instructions per submit")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
