"""What every peer script shares: the ledger task, the worker command's run, the JSON line.

Standard library only: it runs in the peers' venv, which has none of the project.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.ledger import LEDGER_VARIABLE, format_line, read

#: the environment variables the worker processes read (set by ``run_worker``)
URL_VARIABLE = "BENCH_PEER_URL"
QUEUE_VARIABLE = "BENCH_PEER_QUEUE"
ROOT = Path(__file__).resolve().parents[2]

_FD: list[int] = []


def note(payload: dict[str, Any]) -> None:
    """The peer's no-op task: append one ledger line (opened once per process)."""
    started = time.time()
    if not _FD:
        _FD.append(os.open(os.environ[LEDGER_VARIABLE], os.O_WRONLY | os.O_APPEND | os.O_CREAT))
    os.write(_FD[0], format_line(payload, started))


def payloads(count: int) -> list[dict[str, Any]]:
    """The same payloads ours gets: ``{"n": i, "sent": 0.0}``."""
    return [{"n": n, "sent": 0.0} for n in range(count)]


def queue_name(peer: str) -> str:
    """A queue name no other run uses."""
    return f"bench_{peer}_{uuid.uuid4().hex[:10]}"


def arguments() -> tuple[str, int, Path]:
    """``URL COUNT FOLDER`` from the command line."""
    url, count, folder = sys.argv[1:4]
    return url, int(count), Path(folder)


def run_worker(
    command: Sequence[str],
    url: str,
    queue: str,
    count: int,
    folder: Path,
    stop: signal.Signals = signal.SIGTERM,
    halts: bool = False,
) -> dict[str, Any]:
    """Run the peer's worker command until ``count`` tasks started; their rate.

    The worker's own processes note each start in a ledger, as ours do; the command is
    stopped with ``stop`` once all have started (or it exits by itself when ``halts``).
    """
    ledger = folder / f"{queue}.ledger"
    log = folder / f"{queue}.log"
    env = dict(os.environ)
    env.update({LEDGER_VARIABLE: str(ledger), URL_VARIABLE: url, QUEUE_VARIABLE: queue})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    deadline = time.monotonic() + max(120.0, count / 50)
    with open(log, "wb") as out:
        launched = time.time()
        process = subprocess.Popen(command, cwd=folder, env=env, stdout=out, stderr=out)
    try:
        while len(read(str(ledger))) < count:
            if process.poll() is not None:
                if halts and process.returncode == 0:
                    break
                raise RuntimeError(f"{command[0]} exited {process.returncode} (log: {log})")
            if time.monotonic() > deadline:
                break  # report the rate of what was done
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            process.send_signal(stop)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    starts = sorted(e.started for e in read(str(ledger)))
    if len(starts) < 2:
        raise RuntimeError(f"only {len(starts)} task(s) ran (log: {log})")
    return {
        "rate": (len(starts) - 1) / (starts[-1] - starts[0]),
        "done": len(starts),
        "startup": starts[0] - launched,
        "command": " ".join(Path(command[0]).name if i == 0 else c for i, c in enumerate(command)),
    }


def main(drain: Callable[[str, int, Path], dict[str, Any]]) -> None:
    """Run a peer's ``drain(url, count, folder)`` and print its JSON line."""
    url, count, folder = arguments()
    folder.mkdir(parents=True, exist_ok=True)
    print(json.dumps(drain(url, count, folder)), flush=True)


def tool(name: str) -> str:
    """A console script of the peers' venv (beside its ``python``)."""
    return str(Path(sys.executable).parent / name)
