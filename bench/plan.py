"""What the benchmark measures, how much, and where: sizes, transports, targets.

The servers are the ones the tests use (PostgreSQL db ``test``, Redis db 15, RabbitMQ
guest/guest on vhost ``/``); a ``BENCH_<NAME>_URI`` environment variable points a
transport elsewhere.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: plugins of the workspace that only tests use (entry-point names): switched off in every
#: process the bench measures, since users do not install them (their hooks cost about
#: 10 us a task, reading the environment)
TEST_PLUGINS = "testworkers_hooks,testworkers_lifecycle"
#: more plugins to switch off in every process the bench measures (comma-separated entry
#: point names): ``python -m bench.compare --base-plugins`` names those that the base
#: commit did not have, so that both measure the same installed plugins
EXTRA_PLUGINS_OFF = "BENCH_DISABLE_PLUGINS"


def plugins_off() -> str:
    """The plugins switched off in the bench's processes (the setting's value)."""
    extra = os.environ.get(EXTRA_PLUGINS_OFF, "").strip(",")
    return f"{TEST_PLUGINS},{extra}" if extra else TEST_PLUGINS


#: the order of the table: the in-process reference first, then the embedded default
TRANSPORTS = ("localmem", "filesys", "pgsql", "redis", "amqp")

#: where a transport that keeps no task status (AMQP) keeps it for the status step
#: (``asynctask_state``), as a user of it would
STATE_STORE = "redis"

#: the async table: ``child_concurrency`` values tried with one child
ASYNC_CONCURRENCY = (1, 10, 100, 500)
#: the bench-only venv with the peers, arq among them (``make bench PEERS=1`` makes it);
#: never a dependency of the project
ARQ_PYTHON = Path(__file__).resolve().parent.parent / ".venv-peers" / "bin" / "python"


@dataclass(frozen=True)
class Sizes:
    """How many tasks each measure uses."""

    submit_one: int
    submit_batch: int
    batch: int
    #: seconds each side of a submit measure may take at most (fsync costs ~6 ms here)
    submit_budget: float
    drain: int
    #: drains run this many times (ours and raw alternating), the best of each kept
    drain_rounds: int
    latency: int
    latency_gap: float
    depth_small: int
    depth_rounds: int
    depth_big: int
    depth_take: int
    #: queues for the ``queues`` call: a few, then many (each holds one task)
    queues_few: int
    queues_many: int
    #: waiting tasks in one queue for the deepest drain and ``queues`` call
    deep: int
    #: the async table: each of a child's slots runs this many tasks in a drain
    async_rounds: int = 40
    #: tasks each peer drains (``--peers``), in the drain's rounds (some peers do 100/s)
    peer_drain: int = 5000
    #: tasks passed through pgsql's tables (no VACUUM since) for the churned-table rows
    churn: int = 1_000_000
    #: the tracking-cost row (issue 16): tasks per drain, and pairs of drains (tracked
    #: and untracked back to back, ABBA: ``bench.paired``), the medians kept
    status_drain: int = 10_000
    status_pairs: int = 4


FULL = Sizes(
    submit_one=6000,
    submit_batch=15_000,
    batch=1000,
    submit_budget=6.0,
    drain=20_000,
    drain_rounds=2,
    latency=500,
    latency_gap=0.005,
    depth_small=100,
    depth_rounds=50,
    depth_big=100_000,
    depth_take=10_000,
    queues_few=100,
    queues_many=1000,
    deep=1_000_000,
)
QUICK = Sizes(
    submit_one=150,
    submit_batch=300,
    batch=100,
    submit_budget=1.0,
    drain=500,
    drain_rounds=1,
    latency=50,
    latency_gap=0.005,
    depth_small=100,
    depth_rounds=2,
    depth_big=2000,
    depth_take=200,
    queues_few=10,
    queues_many=40,
    deep=4000,
    async_rounds=4,
    peer_drain=300,
    churn=20_000,
    status_drain=300,
    status_pairs=2,
)


@dataclass(frozen=True)
class Backend:
    """One transport: its URI, a faster URI for filling queues, and its server check."""

    name: str
    #: the transport URI, given a scratch folder
    uri: Callable[[Path], str]
    #: the URI used to fill a queue before a drain (not timed); same storage, same queue
    fill_uri: Callable[[Path], str]
    #: raises when the server is unreachable
    check: Callable[[], None] | None
    #: whether ``asynctask workers`` can run it (localmem lives in one process)
    multiprocess: bool = True
    #: the most tasks the deepest measure fills (files and a shared broker: filling a
    #: million takes them many minutes), or None for ``Sizes.deep``
    deep_cap: int | None = None


def _env(name: str, default: str) -> str:
    return os.environ.get(f"BENCH_{name.upper()}_URI", default)


PGSQL = _env("pgsql", "pgsql://127.0.0.1:5432/test")
REDIS = _env("redis", "redis://127.0.0.1:6379/15")
AMQP = _env("amqp", "amqp://guest:guest@127.0.0.1:5672//")


def _check_pgsql() -> None:
    import psycopg

    from bench.raw import pg_conninfo

    psycopg.connect(pg_conninfo(), connect_timeout=3).close()


def _check_redis() -> None:
    from bench.raw import redis_client

    redis_client().ping()


def _check_amqp() -> None:
    from bench.raw import amqp_connection

    with amqp_connection() as conn:
        conn.connect()


def _filesys(tmp: Path) -> str:
    return f"filesys:{tmp / 'queues'}"


BACKENDS: dict[str, Backend] = {
    "localmem": Backend(
        "localmem", lambda tmp: "localmem:bench", lambda tmp: "localmem:bench", None, False
    ),
    # Filling 100,000 files with an fsync each takes minutes; the fill is not what is
    # measured, so it skips the fsyncs (the files are the same).
    "filesys": Backend(
        "filesys", _filesys, lambda tmp: _filesys(tmp) + "?fsync=false", None, deep_cap=200_000
    ),
    "pgsql": Backend("pgsql", lambda tmp: PGSQL, lambda tmp: PGSQL, _check_pgsql),
    "redis": Backend("redis", lambda tmp: REDIS, lambda tmp: REDIS, _check_redis),
    "amqp": Backend("amqp", lambda tmp: AMQP, lambda tmp: AMQP, _check_amqp, deep_cap=200_000),
}


def unavailable(name: str) -> str | None:
    """Why a transport cannot be measured now (not installed, server down), else None."""
    if name != "localmem":
        module = f"asynctask_{name}.transport"
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        if not found:
            return f"not installed yet ({module} is missing)"
    check = BACKENDS[name].check
    if check is not None:
        try:
            check()
        except Exception as exc:
            return f"server unreachable ({type(exc).__name__}: {exc})"
    return None


def unique_name(prefix: str) -> str:
    """A queue (or key, table) name no other run uses."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"
