"""``python -m bench.servercost``: Redis's instructions per task of a worker child's drain.

``bench.taskcost --instructions`` counts the child's side; this counts the server's: a
private ``redis-server`` (no persistence) runs under ``valgrind --tool=callgrind`` with
counting off, this process drains a filled queue with the child's run loop (the same
``bench.taskcost`` drain: no-op worker, report pipe), and the server counts only while
the run loop runs (the queue's fill and purge left out). A count the machine's load does
not move: compare two commits, or prefetches, with it.

Example: ``python -m bench.servercost --tasks 2000 --prefetch 4,32 --untracked``
(``--out DIR`` keeps each run's callgrind file for ``callgrind_annotate``).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from pathlib import Path

from chaos.private import free_port, wait_until
from chaos.private_redis import redis_command


def instructions(prefetch: int, tasks: int, tracked: bool, out: Path | None = None) -> float:
    """Redis's instructions per task of one drain of ``tasks`` at ``prefetch``."""
    from asynctask.plugins import load_plugins
    from bench.taskcost import _drain

    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="asynctask-servercost-"))
    target = out / f"callgrind.redis.p{prefetch}.{'t' if tracked else 'u'}" if out else None
    command = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
    command += [f"--callgrind-out-file={target or os.devnull}"]
    command += ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", str(folder), "--daemonize", "no"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: _answers(port), 60, f"redis-server under callgrind on {port}")
        uri = f"redis://127.0.0.1:{port}/0"
        transport = load_plugins().transport_class(uri)(uri)
        with transport:
            _drain(transport, prefetch, 200, tracked, False)  # warm: connection, scripts
            _drain(transport, prefetch, tasks, tracked, False, counted=True, pid=server.pid)
        redis_command(port, None, "SHUTDOWN", "NOSAVE")
        _, stderr = server.communicate(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    found = re.search(r"Collected : (\d+)", stderr)
    if found is None:
        raise RuntimeError(f"callgrind counted nothing: {stderr[-500:]}")
    return int(found[1]) / tasks


def _answers(port: int) -> bool:
    try:
        return b"PONG" in redis_command(port, None, "PING")
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    """Count each prefetch (tracked, and untracked with ``--untracked``); print them."""
    from asynctask.plugins import DISABLE_VARIABLE
    from bench.plan import TEST_PLUGINS

    parser = argparse.ArgumentParser(prog="python -m bench.servercost", description=__doc__)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--prefetch", default="4,32", help="comma-separated (4,32)")
    parser.add_argument("--untracked", action="store_true", help="track_status = False too")
    parser.add_argument("--out", type=Path, default=None, help="keep the callgrind files here")
    args = parser.parse_args(argv)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault(DISABLE_VARIABLE, TEST_PLUGINS)  # as the bench's children run
    os.environ.pop("BENCH_LEDGER", None)
    for tracked in (True, False) if args.untracked else (True,):
        for prefetch in (int(p) for p in args.prefetch.split(",")):
            count = instructions(prefetch, args.tasks, tracked, args.out)
            print(f"redis-server, prefetch {prefetch}, tracked {tracked}: {count:,.0f} a task")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
