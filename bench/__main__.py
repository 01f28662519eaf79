"""``python -m bench``: measure every installed transport beside its raw client.

Examples::

    python -m bench                        # full run: prints the table, writes docs/
    python -m bench --quick --only filesys --json /tmp/bench.json   # a smoke run
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from asynctask.plugins import DISABLE_VARIABLE
from bench import machine, peer, report
from bench.measure import measure
from bench.ours import ROOT
from bench.plan import FULL, QUICK, TRANSPORTS, plugins_off


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="asynctask's submit, drain, latency and depth beside the raw clients.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny counts: a smoke test of the harness"
    )
    parser.add_argument(
        "--only",
        metavar="NAMES",
        help=f"comma-separated transports (default: all of {','.join(TRANSPORTS)})",
    )
    parser.add_argument(
        "--steps",
        metavar="NAMES",
        help="comma-separated steps to run (default: all of submit,drain,latency,depth,"
        "depth_raw,prefetch,scale,asyncio,status,shapes,replicas,pgtable,cost)",
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also drain with Dramatiq, Huey, PgQueuer and arq (needs .venv-peers: "
        "make bench PEERS=1)",
    )
    parser.add_argument(
        "--untracked",
        action="store_true",
        help="ours with status tracking off: every queue marked untracked before its "
        "submits, workers with track_status = False (to compare with a commit before "
        "status tracking: python -m bench.compare)",
    )
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write the results as JSON")
    parser.add_argument(
        "--docs",
        metavar="DIR",
        type=Path,
        help="write benchmarks.md and benchmarks.png here (default: docs/ on a full run, "
        "nothing on a quick one)",
    )
    return parser


def main(argv: list[str]) -> int:
    """Run the benchmark; 0 when every transport was measured or skipped cleanly."""
    args = _parser().parse_args(argv)
    # This process submits and consumes too: the test-only plugins are off here as in
    # the workers (their hooks cost ~7 us a submit; users do not install them)
    os.environ[DISABLE_VARIABLE] = plugins_off()
    names = TRANSPORTS if not args.only else tuple(n.strip() for n in args.only.split(","))
    unknown = [n for n in names if n not in TRANSPORTS]
    if unknown:
        print(f"unknown transport(s): {', '.join(unknown)}; known: {', '.join(TRANSPORTS)}")
        return 2
    if args.peers and (why := peer.available()) is not None:
        print(why)
        return 2
    docs = args.docs if args.docs is not None else (None if args.quick else ROOT / "docs")
    if argv == ["--peers"]:
        command = "make bench PEERS=1"
    else:
        command = "make bench" if not argv else "python -m bench " + shlex.join(argv)
    run = report.Run(
        command=command,
        quick=args.quick,
        peers=args.peers,
        date=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        sizes=QUICK if args.quick else FULL,
        machine=machine.machine(),
        packages=machine.packages(),
        servers=machine.servers(),
        commit=machine.commit(ROOT),
    )

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    began = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="asynctask-bench-"))
    steps = None if not args.steps else {s.strip() for s in args.steps.split(",")}
    for name in names:
        run.results.append(
            measure(name, run.sizes, scratch, say, steps, args.peers, args.untracked)
        )
    run.seconds = time.monotonic() - began
    run.machine["load_after"] = machine.load()
    failed = any(r.errors for r in run.results)
    if failed:
        say(f"kept the logs and ledgers in {scratch}")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    print(report.table(run.results))
    print(f"\n{run.seconds:.0f} s in all")
    if args.json is not None:
        report.write_json(run, args.json)
    if docs is not None:
        docs.mkdir(parents=True, exist_ok=True)
        report.chart(run.results, docs / "benchmarks.png")
        (docs / "benchmarks.md").write_text(
            report.markdown(run, "benchmarks.png"), encoding="utf-8"
        )
        print(f"wrote {docs / 'benchmarks.md'} and {docs / 'benchmarks.png'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
