"""The harness's side of the peers: which peer runs on which backend, and one drain of it.

The peers run in ``.venv-peers`` (``make bench PEERS=1``), a venv of their own, as
``python -m bench.peers.<module> URL COUNT FOLDER`` (see ``bench.peers``); each prints one
JSON line with its rate from the first task's start to the last's, as ours is counted.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.ours import ROOT

#: the Python of the bench-only venv with the peers; never one of the project's dependencies
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"


@dataclass(frozen=True)
class Peer:
    """One peer on one backend: its name, its script, and its settings for the docs."""

    #: the measure key of its row (``peer_dramatiq``)
    key: str
    name: str
    module: str
    #: which of its settings, from its docs, make it durable (shown in docs/benchmarks.md)
    settings: str


DRAMATIQ_REDIS = Peer(
    "peer_dramatiq",
    "Dramatiq",
    "dramatiq_peer",
    "`RedisBroker` with its defaults: a message stays in the worker's ack set until the "
    "actor returns and is requeued when the worker's heartbeat stops; default middleware, "
    "no result backend; `dramatiq MODULE --processes 1` (its default 8 threads)",
)
DRAMATIQ_AMQP = Peer(
    "peer_dramatiq",
    "Dramatiq",
    "dramatiq_peer",
    "`RabbitmqBroker(confirm_delivery=True)`: durable queues, persistent messages, publisher "
    "confirms (as ours), acknowledged after the actor returns; `dramatiq MODULE "
    "--processes 1` (8 threads)",
)
HUEY_REDIS = Peer(
    "peer_huey",
    "Huey",
    "huey_peer",
    "`RedisHuey` with its defaults (blocking pop; Huey has no acknowledgement: a task whose "
    "consumer dies is lost); `huey_consumer MODULE.HUEY -k process -w 1 --no-periodic`",
)
HUEY_FILES = Peer(
    "peer_huey",
    "Huey",
    "huey_peer",
    "`SqliteHuey(fsync=True)` (SQLite `synchronous=FULL`, WAL) in the scratch folder; not "
    "`FileHuey`, which its docs say is not for production (no fsync, one lock around "
    "everything); no acknowledgement; `huey_consumer MODULE.HUEY -k process -w 1 "
    "--no-periodic`",
)
ARQ = Peer(
    "peer_arq",
    "arq",
    "arq_peer",
    "its defaults (`max_jobs` 10, results kept an hour; a job whose worker dies runs again "
    "once its in-progress key expires); `arq MODULE.WorkerSettings --burst`",
)
PGQUEUER = Peer(
    "peer_pgqueuer",
    "PgQueuer",
    "pgqueuer_peer",
    "`pgq install --durability durable` (every table logged; in a schema of its own, "
    "`asynctask_bench_pgqueuer`), the asyncpg driver, a job re-picked when its worker's "
    "heartbeat stops; `pgq run MODULE:create --mode drain` (batch size 10)",
)

#: the peers of each backend, as issue 20 names them
PEERS: dict[str, tuple[Peer, ...]] = {
    "redis": (DRAMATIQ_REDIS, HUEY_REDIS, ARQ),
    "amqp": (DRAMATIQ_AMQP,),
    "pgsql": (PGQUEUER,),
    "filesys": (HUEY_FILES,),
}


def available() -> str | None:
    """Why the peers cannot run (no venv), else None."""
    if not PEERS_PYTHON.exists():
        return f"{PEERS_PYTHON} is missing: `make bench PEERS=1` makes it"
    return None


def drain(peer: Peer, url: str, count: int, folder: Path) -> dict[str, object]:
    """One drain of ``count`` no-op tasks by ``peer``: its JSON (``rate``, ``done``, ...)."""
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [str(PEERS_PYTHON), "-m", f"bench.peers.{peer.module}", url, str(count), str(folder)],
        capture_output=True,
        text=True,
        timeout=max(300.0, count / 20),
        cwd=ROOT,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{peer.name} ({peer.module}) failed: {last}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result
