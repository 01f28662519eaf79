"""``python -m bench.servercost``: Redis's instructions per task of a worker child's drain.

``bench.taskcost --instructions`` counts the child's side; this counts the server's: a
private ``redis-server`` (no persistence) runs under ``valgrind --tool=callgrind`` with
counting off, this process drains a filled queue with the child's run loop (the same
``bench.taskcost`` drain: no-op worker, report pipe), and the server counts only while
the run loop runs (the queue's fill and purge left out). A count the machine's load does
not move: compare two commits, or prefetches, with it.

Example: ``python -m bench.servercost --tasks 2000 --prefetch 4,32 --untracked``
(``--out DIR`` keeps each run's callgrind file for ``callgrind_annotate``).

With ``--stats`` the server runs without valgrind and logs every command it runs in its
slow log (``slowlog-log-slower-than 0``): per task, the calls and the server's
microseconds of each command, the scripts (``EVALSHA``) named by their SHA1, over the
same drain. The microseconds move with the load; the calls a task do not.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass
class CommandCost:
    """One command's (or script's) calls and server microseconds per task of a drain."""

    name: str
    calls: float
    usec: float

    @property
    def usec_per_call(self) -> float:
        """The server's microseconds a call (the slow log's duration)."""
        return self.usec / self.calls if self.calls else 0.0


def command_costs(prefetch: int, tasks: int, tracked: bool) -> list[CommandCost]:
    """Per task, each command's calls and server microseconds over one drain of ``tasks``
    at ``prefetch`` (a private redis-server, every command in its slow log)."""
    import redis

    from asynctask.plugins import load_plugins
    from asynctask_redis import scripts, statestore
    from bench.taskcost import _drain
    from chaos.private_redis import private_redis

    names = {
        s.sha: s.name
        for s in (*vars(scripts).values(), *vars(statestore).values())
        if isinstance(s, scripts.Script)
    }
    with private_redis(appendonly=False) as server:
        uri = server.uri()
        client = redis.Redis(host=server.address, port=server.port)
        client.config_set("slowlog-max-len", str(40 * tasks + 10000))
        transport = load_plugins().transport_class(uri)(uri)
        with transport:
            _drain(transport, prefetch, 200, tracked, False)  # warm: connection, scripts
            logged = _drain_logged(client, transport, prefetch, tasks, tracked)
        client.close()
    found: dict[str, list[float]] = {}
    for entry in logged:
        words = entry["command"].split()
        name = words[0].decode().upper() if words else "?"
        if entry["client_address"] == b"?:0":  # run by a script: inside its time
            name = f"  in scripts: {name}"
        if name in ("EVALSHA", "EVAL") and len(words) > 1:
            name = f"{name} {names.get(words[1].decode(), words[1].decode()[:8])}"
        seen = found.setdefault(name, [0.0, 0.0])
        seen[0] += 1
        seen[1] += entry["duration"]
    costs = [CommandCost(n, c / tasks, u / tasks) for n, (c, u) in found.items()]
    return sorted(costs, key=lambda c: -c.usec)


def _drain_logged(
    client: Any, transport: Any, prefetch: int, tasks: int, tracked: bool
) -> list[dict[str, Any]]:
    """The slow log's entries of one drain (the queue's fill and purge left out)."""
    from bench import taskcost

    entries: list[dict[str, Any]] = []

    def log(on: bool, pid: int | None = None) -> None:
        if on:
            client.slowlog_reset()
            client.config_set("slowlog-log-slower-than", "0")
        else:
            client.config_set("slowlog-log-slower-than", "-1")
            entries.extend(client.slowlog_get(-1))

    saved = taskcost._callgrind
    taskcost._callgrind = log
    try:
        taskcost._drain(transport, prefetch, tasks, tracked, False, counted=True)
    finally:
        taskcost._callgrind = saved
    # the switch's own CONFIG SET is logged too: not the drain's
    return [e for e in entries if not e["command"].upper().startswith(b"CONFIG")]


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
    parser.add_argument(
        "--stats", action="store_true", help="calls and server us a task by command, no valgrind"
    )
    args = parser.parse_args(argv)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault(DISABLE_VARIABLE, TEST_PLUGINS)  # as the bench's children run
    os.environ.pop("BENCH_LEDGER", None)
    for tracked in (True, False) if args.untracked else (True,):
        for prefetch in (int(p) for p in args.prefetch.split(",")):
            if args.stats:
                costs = command_costs(prefetch, args.tasks, tracked)
                total = sum(c.usec for c in costs if not c.name.startswith(" "))
                head = f"redis-server, prefetch {prefetch}, tracked {tracked}"
                print(f"{head}: {total:.2f} us a task")
                for c in costs:
                    print(
                        f"  {c.name:<24} {c.calls:8.4f} calls a task {c.usec:7.2f} us a task"
                        f" {c.usec_per_call:9.1f} us a call"
                    )
                continue
            count = instructions(prefetch, args.tasks, tracked, args.out)
            print(f"redis-server, prefetch {prefetch}, tracked {tracked}: {count:,.0f} a task")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
