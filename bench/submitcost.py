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

import os
import sys

# run as a script: bench/ itself is not a place to import from (its profile.py would
# shadow the standard library's, which cProfile imports)
sys.path[:] = [p for p in sys.path if not p.rstrip("/").endswith("/bench")]

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import cProfile  # noqa: E402
import pstats  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

from bench.loopcost import callgrind, count_instructions  # noqa: E402


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
            callgrind(True)
            for payload in items:
                transport.submit_task(queue, payload)
            callgrind(False)
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
    flags = ["--submits", str(args.submits)] + (["--untracked"] if args.untracked else [])
    return count_instructions(__file__, args.uri, args.tree, flags, args.submits, "submit")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
