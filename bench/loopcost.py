"""``python bench/loopcost.py URI``: instructions per task of a worker child's run loop.

Under ``valgrind --tool=callgrind`` (``--instructions``), fills a queue and drains it
with ``asynctask.runner.run_loop`` in this process as a worker child runs it (the
``bench_noop`` worker writing its ledger line, the report pipe to the supervisor
(``asynctask.reports``), liveness kept by someone else), counting only the loop: a
figure the machine's load does not move. It runs under either tree's interpreter, so
that two commits compare (the base commit's venv; features it lacks are left out)::

    /tmp/base/.venv/bin/python bench/loopcost.py --tree /tmp/base --instructions localmem:
    .venv/bin/python bench/loopcost.py --tree . --instructions --untracked localmem:

Without ``--instructions``: cProfile's Python calls per task, by function.
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
from typing import Any  # noqa: E402


def callgrind(on: bool) -> None:
    """Switch callgrind's counting on or off for this process (run under it)."""
    command = ["callgrind_control", "-i", "on" if on else "off", str(os.getpid())]
    subprocess.run(command, capture_output=True, check=True)


def _filled(uri: str, tasks: int, untracked: bool) -> tuple[Any, str]:
    """The transport of ``uri`` and a new queue of ``tasks`` no-op tasks in it (marked
    untracked first when asked, so that its submits write no status)."""
    from asynctask.api import get_transport
    from asynctask.plugins import load_plugins

    load_plugins([])
    transport = get_transport(uri)
    queue = f"bench_loop_{uuid.uuid4().hex[:10]}"
    if untracked:
        transport.state().set_tracking(queue, False)
    items = [{"n": n, "sent": 0.0} for n in range(tasks)]
    for i in range(0, tasks, 1000):
        transport.submit_tasks(queue, items[i : i + 1000])
    return transport, queue


def loop(
    uri: str, tasks: int, untracked: bool, counted: bool, top: int, report_pipe: bool = True
) -> None:
    """Fill a queue, drain it with the run loop; counted or profiled."""
    os.environ["BENCH_LEDGER"] = os.devnull
    from asynctask.runner import LoopOptions, run_loop
    from bench.workers import BenchNoopWorker

    transport, queue = _filled(uri, tasks, untracked)
    worker = BenchNoopWorker()
    worker.setup()
    fields = LoopOptions.__dataclass_fields__
    extra: dict[str, object] = {}
    null = os.open(os.devnull, os.O_WRONLY)
    if "on_start" in fields and report_pipe:  # a child's report pipe (not in 00bd0fa)
        from asynctask.liveness import new_owner
        from asynctask.reports import ReportWriter

        report = ReportWriter(null)
        extra.update(on_start=report.started, on_settled=report.settled, on_idle=report.flush)
        extra["owner"] = new_owner()
    if untracked:
        extra["track_status"] = False
    prefetch = worker.prefetch or getattr(transport, "default_prefetch", 4)
    options = LoopOptions(halt_when_empty=True, prefetch=prefetch, **extra)  # type: ignore[arg-type]
    profiler = cProfile.Profile() if not counted else None
    if counted:
        callgrind(True)
    if profiler is not None:
        profiler.enable()
    done = run_loop(worker, transport, queue, options).processed
    if profiler is not None:
        profiler.disable()
    if counted:
        callgrind(False)
    worker.teardown()
    os.close(null)
    transport.purge(queue)
    transport.close()
    if done != tasks:
        raise RuntimeError(f"ran {done} of {tasks}")
    if profiler is not None:
        stats = pstats.Stats(profiler)
        rows = []
        total = 0
        found = stats.stats.items()  # type: ignore[attr-defined]
        for (file, line, name), (_, calls, own, cum, _) in found:
            total += calls
            where = f"{file}:{line}:{name}"
            rows.append((calls / tasks, own / tasks * 1e6, cum / tasks * 1e6, where))
        print(f"Python calls per task: {total / tasks:.1f}")
        for calls, own, cum, where in sorted(rows, reverse=True)[:top]:
            where = re.sub(r".*/site-packages/|.*/src/", "", where)
            print(f"{calls:7.2f} calls  {own:6.2f} us own  {cum:7.2f} us cum  {where}")


def threaded_rate(uri: str, tasks: int, threads: int, untracked: bool) -> None:
    """Drain with ``threads`` run loops in this process (the bench's localmem drain):
    print tasks/s by wall time and CPU microseconds per task."""
    import threading
    import time

    os.environ["BENCH_LEDGER"] = os.devnull
    from asynctask.runner import LoopOptions, run_loop
    from bench.workers import BenchNoopWorker

    transport, queue = _filled(uri, tasks, untracked)
    extra: dict[str, object] = {"track_status": False} if untracked else {}

    def run() -> None:
        worker = BenchNoopWorker()
        worker.setup()
        prefetch = worker.prefetch or getattr(transport, "default_prefetch", 4)
        options = LoopOptions(halt_when_empty=True, prefetch=prefetch, **extra)  # type: ignore[arg-type]
        run_loop(worker, transport, queue, options)
        worker.teardown()

    import resource

    pool = [threading.Thread(target=run) for _ in range(threads)]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    counted = bool(os.environ.get("LOOPCOST_COUNTED"))
    cpu, began = time.process_time(), time.perf_counter()
    if counted:
        callgrind(True)
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    if counted:
        callgrind(False)
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu
    after = resource.getrusage(resource.RUSAGE_SELF)
    switches = (after.ru_nvcsw - usage.ru_nvcsw) / tasks
    forced = (after.ru_nivcsw - usage.ru_nivcsw) / tasks
    print(
        f"{tasks / wall:.0f}/s {cpu / tasks * 1e6:.2f} us cpu/task; switches/task "
        f"{switches:.3f} voluntary {forced:.3f} forced"
    )


def main(argv: list[str]) -> int:
    """Count (under callgrind, in a child process) or profile the run loop."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("uri")
    parser.add_argument("--tree", type=Path, required=True)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--untracked", action="store_true")
    parser.add_argument("--instructions", action="store_true")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--no-report", action="store_true", help="without the report pipe")
    parser.add_argument("--threads", type=int, help="instead: tasks/s of this many run loops")
    parser.add_argument("--counted", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # the tree's bench workers are imported in this process by the modes run here (the
    # counted child gets the tree on PYTHONPATH)
    sys.path.insert(0, str(args.tree.resolve()))
    if args.threads:
        threaded_rate(args.uri, args.tasks, args.threads, args.untracked)
        return 0
    if args.counted or not args.instructions:
        loop(args.uri, args.tasks, args.untracked, args.counted, args.top, not args.no_report)
        return 0
    extra = ["--untracked"] if args.untracked else []
    extra += ["--no-report"] if args.no_report else []
    return count_instructions(
        __file__, args.uri, args.tree, ["--tasks", str(args.tasks), *extra], args.tasks, "task"
    )


def count_instructions(
    script: str, uri: str, tree: Path, flags: list[str], count: int, unit: str
) -> int:
    """Run ``script URI --tree TREE FLAGS --counted`` under callgrind (instrumentation
    switched on by the script around what it counts: ``callgrind``) with ``tree`` on
    ``PYTHONPATH`` and the plugins 00bd0fa lacks switched off; print the instructions
    per ``unit`` (of ``count``); the exit status. Shared with ``bench/submitcost.py``."""
    command = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
    command += ["--callgrind-out-file=/dev/null", sys.executable, script, uri]
    command += ["--tree", str(tree), *flags, "--counted"]
    env = dict(os.environ, PYTHONPATH=str(tree.resolve()))
    env["ASYNCTASK_DISABLE_PLUGINS"] = "testworkers_hooks,testworkers_lifecycle,otel,prometheus,web"
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        print(done.stderr[-3000:], file=sys.stderr)
        return 1
    print(f"{uri} {tree}: {int(found[1]) / count:,.0f} instructions per {unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
