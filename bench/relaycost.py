"""``python bench/relaycost.py URI``: instructions (or system calls) per task of an AMQP
worker child's run loop and of its relay process, counted apart.

The relay (``asynctask_amqp.relay``) is a process the consumer starts; here it is
started under ``valgrind --tool=callgrind --instr-atstart=no`` (or ``strace -c -f``)
and its counting is switched on and off around the drain, as this process's own is
(``bench/loopcost.py``'s run loop: the ``bench_noop`` worker, the report pipe). A figure
the machine's load does not move, on both sides of the socketpair. It runs under either
tree's interpreter, so that two commits compare::

    /tmp/base/.venv/bin/python bench/relaycost.py --tree /tmp/base amqp://guest:guest@127.0.0.1//
    .venv/bin/python bench/relaycost.py --tree . --strace amqp://guest:guest@127.0.0.1//
"""

from __future__ import annotations

import sys

# run as a script: bench/ itself is not a place to import from (its profile.py would
# shadow the standard library's)
sys.path[:] = [p for p in sys.path if not p.rstrip("/").endswith("/bench")]

import argparse  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

SCRATCH = Path(os.environ.get("RELAYCOST_SCRATCH") or tempfile.mkdtemp(prefix="relaycost-"))


#: the strace processes attached (strace mode)
tracers: list[subprocess.Popen[bytes]] = []


def _wrap_relays(mode: str) -> list[int]:
    """Start every relay under ``mode`` (callgrind, or strace attached); return the list
    their pids are appended to."""
    import asynctask_amqp.remote as remote

    pids: list[int] = []
    real = subprocess.Popen

    def popen(args: Any, *rest: Any, **kwargs: Any) -> Any:
        if "asynctask_amqp.relay" in args and mode == "callgrind":
            # valgrind runs it in place: the relay's parent is still this process
            out = SCRATCH / "relay.callgrind"
            prefix = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
            prefix += [f"--callgrind-out-file={out}", f"--log-file={SCRATCH}/relay.log"]
            args = [*prefix, *args]
        process = real(args, *rest, **kwargs)
        pids.append(process.pid)
        if "asynctask_amqp.relay" in args and mode == "strace":
            # from its start (its imports too: count a small drain to subtract them)
            trace = str(SCRATCH / "relay.strace")
            tracers.append(
                subprocess.Popen(["strace", "-c", "-f", "-o", trace, "-p", str(process.pid)])
            )
            time.sleep(0.5)
        return process

    remote.subprocess.Popen = popen  # type: ignore[attr-defined]
    return pids


def _control(pid: int, on: bool) -> None:
    subprocess.run(
        ["callgrind_control", "-i", "on" if on else "off", str(pid)],
        capture_output=True,
        check=True,
    )


def drain(uri: str, tree: Path, tasks: int, mode: str, untracked: bool) -> None:
    """Fill a queue, start the first task (relay up, connection open), then count the
    rest of the drain on both sides."""
    sys.path.insert(0, str(tree.resolve()))
    os.environ["BENCH_LEDGER"] = os.devnull
    from asynctask.liveness import new_owner
    from asynctask.reports import ReportWriter
    from asynctask.runner import LoopOptions, run_loop
    from bench.loopcost import _filled
    from bench.workers import BenchNoopWorker

    pids = _wrap_relays(mode)
    transport, queue = _filled(uri, tasks + 1, untracked)
    worker = BenchNoopWorker()
    worker.setup()
    null = os.open(os.devnull, os.O_WRONLY)
    report = ReportWriter(null)
    extra: dict[str, Any] = {"track_status": False} if untracked else {}
    prefetch: int = worker.prefetch or int(getattr(transport, "default_prefetch", 4))

    def options(**more: Any) -> Any:
        return LoopOptions(
            prefetch=prefetch,
            on_settled=report.settled,
            on_idle=report.flush,
            owner=new_owner(),
            **{"on_start": report.started, **extra, **more},
        )

    counted = mode == "callgrind"
    own = bool(os.environ.get("RELAYCOST_SELF"))
    started = options().on_start
    switched: list[bool] = []

    def on_start(delivery: Any) -> None:
        # Counting starts at the first task's start, in the run loop whose relay drains:
        # the relay is up, connected and subscribed by then (not counted). It was
        # switched on after a first run of one task, whose relay had exited by then:
        # ``callgrind_control`` waited for good on it, and the drain's new relay was
        # never counted.
        if counted and not switched:
            switched.append(True)
            for pid in pids:
                _control(pid, True)
            if own:
                _control(os.getpid(), True)
        assert started is not None
        started(delivery)

    if not counted:  # strace attached to both for the drain only
        tasks += 1
        time.sleep(0.2)
        out = str(SCRATCH / "child.strace")
        # its main thread only (-f would follow the relay)
        tracers.append(subprocess.Popen(["strace", "-c", "-o", out, "-p", str(os.getpid())]))
        time.sleep(1.0)  # attached
    began = time.perf_counter()
    loop = options(halt_when_empty=True, on_start=on_start)
    done = run_loop(worker, transport, queue, loop).processed - (1 if counted else 0)
    wall = time.perf_counter() - began
    if counted and own:
        # (the relay's counting stays on to its exit, which the consumer's close waited
        # for: its close, a few calls, is counted with the drain)
        _control(os.getpid(), False)
    for tracer in tracers:
        tracer.send_signal(signal.SIGINT)
        tracer.wait()
    transport.purge(queue)
    transport.close()
    worker.teardown()
    if done != tasks:
        raise RuntimeError(f"ran {done} of {tasks}")
    print(f"drained {done} in {wall:.2f} s ({done / wall:,.0f}/s)", file=sys.stderr)


def main(argv: list[str]) -> int:
    """Run the drain (``--inner``) under this mode's tools and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("uri")
    parser.add_argument("--tree", type=Path, required=True)
    parser.add_argument("--tasks", type=int, default=4000)
    parser.add_argument("--strace", action="store_true", help="system calls, not instructions")
    parser.add_argument("--untracked", action="store_true")
    parser.add_argument("--relay-only", action="store_true", help="callgrind on the relay only")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    mode = "strace" if args.strace else "callgrind"
    if args.inner:
        drain(args.uri, args.tree, args.tasks, mode, args.untracked)
        return 0
    inner = [sys.executable, __file__, args.uri, "--tree", str(args.tree), "--inner"]
    inner += ["--tasks", str(args.tasks)] + (["--strace"] if args.strace else [])
    inner += ["--untracked"] if args.untracked else []
    env = dict(os.environ, PYTHONPATH=str(args.tree.resolve()), RELAYCOST_SCRATCH=str(SCRATCH))
    env["ASYNCTASK_DISABLE_PLUGINS"] = "testworkers_hooks,testworkers_lifecycle,otel,prometheus,web"
    if mode == "callgrind" and args.relay_only:
        command = inner
    elif mode == "callgrind":
        out = SCRATCH / "child.callgrind"
        command = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
        command += [f"--callgrind-out-file={out}", *inner]
        env["RELAYCOST_SELF"] = "1"
    else:
        command = inner
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        return 1
    print(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "")
    if mode == "callgrind":
        child = re.search(r"Collected : (\d+)", done.stderr)
        relay = re.search(r"Collected : (\d+)", (SCRATCH / "relay.log").read_text())
        for who, found in (("child", child), ("relay", relay)):
            figure = f"{int(found[1]) / args.tasks:,.0f}" if found else "?"
            print(f"{who}: {figure} instructions per task")
    else:
        for who in ("child", "relay"):
            text = (SCRATCH / f"{who}.strace").read_text()
            total = re.search(r"^\s*100\.00\s+\S+\s+\S+\s+(\d+)", text, re.M)
            calls = int(total[1]) if total else 0
            print(f"{who}: {calls / args.tasks:.2f} system calls per task (strace -c)")
            print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
