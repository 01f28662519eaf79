"""``python bench/drain_cpu.py``: CPU per task of the supervisor and of each child in a drain.

Wall-clock drain rates on 2 shared cores move with the other work on the machine; the
CPU each process of ``asynctask workers`` spends per task moves much less, and it says
who pays: with 2 children on 2 cores, every microsecond the supervisor spends is one the
children do not get. This fills a queue, runs ``asynctask workers --halt-when-empty``
(the no-op ``bench_noop`` worker, as ``make bench``'s drain), samples every thread's
on-CPU time (``/proc/<pid>/task/<tid>/schedstat``, nanoseconds) and its number of
times scheduled in, and reports both per task between the first task's start and the
last's (the bench's ledger): start-up and shutdown left out.

It runs under either tree's interpreter, so that two commits compare in one session
(the base commit's venv, its own packages and ``bench.workers``)::

    /tmp/base/.venv/bin/python bench/drain_cpu.py --tree /tmp/base filesys --children 2
    .venv/bin/python bench/drain_cpu.py --tree . filesys --children 2 --untracked

``--strace`` runs the command under ``strace -f -c`` instead (system calls per task of
every process: counts, not times; strace slows everything).

``amqp`` keeps its statuses in ``--state`` (the bench's Redis by default; a private
server's URI with ``--server-pid`` to count its CPU too), and each child's relay process
(``asynctask_amqp.relay``) is reported beside its child::

    .venv/bin/python bench/drain_cpu.py --tree . amqp --children 1 \
        --state redis://127.0.0.1:16399/0 --server-pid 12345
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

#: the bench's test-only plugins, off in every bench process (``bench.plan``)
TEST_PLUGINS = "testworkers_hooks,testworkers_lifecycle"
#: what this tree has and the base commit (00bd0fa) had not: off with ``--base-plugins``
EXTRA_PLUGINS = "otel,prometheus,web"
URIS = {"redis": "redis://127.0.0.1:6379/15", "amqp": "amqp://guest:guest@127.0.0.1:5672//"}


def _threads(pid: int) -> dict[int, tuple[int, int]]:
    """(on-CPU ns, times scheduled in) of each thread of ``pid``; empty once it is gone."""
    out: dict[int, tuple[int, int]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as file:
                ran, _, slices = file.read().split()
        except (OSError, ValueError):
            continue
        out[int(tid)] = (int(ran), int(slices))
    return out


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as file:
            return [int(p) for p in file.read().split()]
    except OSError:
        return []


class Sampler(threading.Thread):
    """Samples the supervisor's and its children's threads every ``every`` seconds."""

    def __init__(self, pid: int, extra: tuple[int, ...] = (), every: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.extra = extra
        self.pid, self.every = pid, every
        #: (time.time(), {pid: {tid: (ns, slices)}})
        self.samples: list[tuple[float, dict[int, dict[int, tuple[int, int]]]]] = []
        #: children's children seen (an amqp child's relay): pid -> the child's pid
        self.relays: dict[int, int] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            now = time.time()
            seen = {self.pid: _threads(self.pid)}
            for extra in self.extra:
                seen[extra] = _threads(extra)
            for child in _children(self.pid):
                seen[child] = _threads(child)
                for grandchild in _children(child):  # an amqp child's relay
                    seen[grandchild] = _threads(grandchild)
                    self.relays[grandchild] = child
            self.samples.append((now, seen))
            time.sleep(self.every)

    def at(self, when: float, pid: int, main: bool | None = None) -> tuple[int, int]:
        """(ns, slices) of ``pid``'s threads at the last sample before ``when``
        (``main``: True, its main thread only; False, the others only)."""
        best: tuple[int, int] = (0, 0)
        for stamp, seen in self.samples:
            if stamp > when:
                break
            threads = seen.get(pid)
            if threads:
                picked = [t for tid, t in threads.items() if main is None or (tid == pid) == main]
                best = (sum(t[0] for t in picked), sum(t[1] for t in picked))
        return best


def _fill(uri: str, queue: str, count: int, untracked: bool, state: str | None) -> None:
    from asynctask.api import get_transport

    transport = get_transport(uri)
    transport.state_uri = state
    if untracked:
        transport.state().set_tracking(queue, False)
    items = [{"n": n, "sent": 0.0} for n in range(count)]
    for i in range(0, count, 1000):
        transport.submit_tasks(queue, items[i : i + 1000])
    transport.close()


def main(argv: list[str]) -> int:
    """Fill, drain, print CPU per task by process (JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("transport", choices=("filesys", "redis", "amqp"))
    parser.add_argument("--tree", type=Path, required=True, help="the tree whose bench.workers")
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--children", type=int, default=2)
    parser.add_argument("--untracked", action="store_true", help="queue untracked (issue 16)")
    parser.add_argument("--base-plugins", action="store_true", help=f"{EXTRA_PLUGINS} off")
    parser.add_argument("--strace", action="store_true", help="system calls instead")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--uri", help="the transport URI (redis: a private server's)")
    parser.add_argument("--server-pid", type=int, help="also sample this process (a server)")
    parser.add_argument(
        "--state", default="redis://127.0.0.1:6379/15", help="amqp: asynctask_state's URI"
    )
    args = parser.parse_args(argv)
    state = args.state if args.transport == "amqp" else None
    scratch = Path(tempfile.mkdtemp(prefix="drain-cpu-"))
    queue = f"bench_cpu_{uuid.uuid4().hex[:10]}"
    if args.transport == "filesys":
        uri, fill_uri = f"filesys:{scratch / 'queues'}", f"filesys:{scratch / 'queues'}?fsync=false"
    else:
        uri = fill_uri = args.uri or URIS[args.transport]
    _fill(fill_uri, queue, args.tasks, args.untracked, state)
    from asynctask.testing import clean_environment, workers_command

    entry: dict[str, object] = {"worker": "bench_noop", "concurrency": args.children}
    if args.untracked:
        entry["track_status"] = False
    command = workers_command(
        uri,
        {queue: entry},
        "--import",
        "bench.workers",
        "-q",
        "--halt-when-empty",
        settings={"asynctask_state": state} if state else None,
    )
    ledger = scratch / "ledger"
    off = TEST_PLUGINS + ("," + EXTRA_PLUGINS if args.base_plugins else "")
    env = clean_environment(BENCH_LEDGER=str(ledger), ASYNCTASK_DISABLE_PLUGINS=off)
    env["PYTHONPATH"] = str(args.tree.resolve())
    strace_out = scratch / "strace"
    if args.strace:
        command = ["strace", "-f", "-c", "-o", str(strace_out), *command]
    log = scratch / "log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=scratch, env=env, stdout=out, stderr=out)
    sampler = Sampler(process.pid, (args.server_pid,) if args.server_pid else ())
    sampler.start()
    code = process.wait()
    sampler.done.set()
    sampler.join()
    if code != 0:
        print(log.read_text()[-2000:], file=sys.stderr)
        return 1
    lines = [line.split() for line in ledger.read_text().splitlines()]
    starts = sorted(float(line[2]) for line in lines)
    pids = sorted({int(line[3]) for line in lines})
    first, last = starts[0], starts[-1]
    n = len(starts) - 1
    result: dict[str, object] = {
        "transport": args.transport,
        "tree": str(args.tree),
        "tasks": len(starts),
        "children": args.children,
        "rate": round(n / (last - first)),
        "load": os.getloadavg()[0],
    }
    if args.strace:
        result["strace"] = strace_out.read_text()
    else:
        supervisor = process.pid if not args.strace else None
        roles = {"supervisor": supervisor} | {f"child {pid}": pid for pid in pids}
        for relay, child in sorted(sampler.relays.items()):
            if child in pids:
                roles[f"relay {relay} of {child}"] = relay
        if args.server_pid:
            roles["server"] = args.server_pid
        for role, pid in roles.items():
            if pid is None:
                continue
            figures: dict[str, float] = {}
            for part, main in (("", None), ("main_", True), ("threads_", False)):
                ns0, s0 = sampler.at(first, pid, main)
                ns1, s1 = sampler.at(last, pid, main)
                figures[f"{part}cpu_us"] = round((ns1 - ns0) / 1000 / n, 2)
                figures[f"{part}sched"] = round((s1 - s0) / n, 3)
            result[role] = figures
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            if key == "strace":
                print(value)
            else:
                print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
