"""PgQueuer on PostgreSQL: its own schema, its own ``pgq run`` command.

Production settings for durability, from PgQueuer's docs: ``pgq install --durability
durable`` (every table logged, the default; ``balanced`` and ``volatile`` make some or all
tables UNLOGGED), in a schema of its own (``asynctask_bench_pgqueuer``) in the bench's
database, installed once and kept; the asyncpg driver; a job's row is deleted and logged
when it finished, and a job whose worker stops beating is picked again
(``--heartbeat-timeout``). The worker: ``pgq run MODULE:create --mode drain`` (one
process; its default ``--batch-size`` 10; it exits when the queue is empty).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.peers import common

MODULE = "bench.peers.pgqueuer_peer"
SCHEMA = "asynctask_bench_pgqueuer"


def dsn(url: str) -> str:
    """The bench's ``pgsql://host:port/db`` as a libpq URL (the local user, as the bench)."""
    parts = urlsplit(url.replace("pgsql://", "postgresql://", 1))
    auth = f"{parts.username}@" if parts.username else ""
    database = parts.path.lstrip("/") or "test"
    return f"postgresql://{auth}{parts.hostname or '127.0.0.1'}:{parts.port or 5432}/{database}"


def create() -> AbstractAsyncContextManager[Any]:
    """The factory ``pgq run`` calls: a PgQueuer whose one entrypoint is the no-op."""
    return _create()


@asynccontextmanager
async def _create() -> AsyncIterator[Any]:
    import asyncpg  # type: ignore[import-not-found,unused-ignore]
    from pgqueuer import PgQueuer  # type: ignore[import-not-found,unused-ignore]
    from pgqueuer.db import AsyncpgDriver  # type: ignore[import-not-found,unused-ignore]

    connection = await asyncpg.connect(dsn(os.environ[common.URL_VARIABLE]))
    queuer = PgQueuer(AsyncpgDriver(connection))

    async def noop(job: Any) -> None:
        common.note(json.loads(job.payload))

    queuer.entrypoint(os.environ[common.QUEUE_VARIABLE])(noop)
    try:
        yield queuer
    finally:
        await connection.close()


def _environment(url: str) -> dict[str, str]:
    return {**os.environ, "PGDSN": dsn(url), "PGQUEUER_SCHEMA": SCHEMA}


def _install(url: str) -> None:
    """``pgq install`` once: later runs find the schema's tables there."""
    env = _environment(url)
    verify = [common.tool("pgq"), "verify", "--expect", "present"]
    if subprocess.run(verify, env=env, capture_output=True, check=False).returncode == 0:
        return
    install = [common.tool("pgq"), "install", "--durability", "durable"]
    subprocess.run(install, env=env, capture_output=True, check=True)


async def _fill(url: str, entrypoint: str, count: int) -> None:
    import asyncpg  # type: ignore[import-not-found,unused-ignore]
    from pgqueuer.db import AsyncpgDriver  # type: ignore[import-not-found,unused-ignore]
    from pgqueuer.queries import Queries  # type: ignore[import-not-found,unused-ignore]

    connection = await asyncpg.connect(dsn(url))
    try:
        queries = Queries(AsyncpgDriver(connection))
        items = common.payloads(count)
        for i in range(0, count, 1000):
            part = items[i : i + 1000]
            await queries.enqueue(
                [entrypoint] * len(part), [json.dumps(p).encode() for p in part], [0] * len(part)
            )
    finally:
        await connection.close()


async def _clean(url: str, entrypoint: str) -> None:
    import asyncpg  # type: ignore[import-not-found,unused-ignore]

    connection = await asyncpg.connect(dsn(url))
    try:
        for table in ("pgqueuer", "pgqueuer_log"):
            await connection.execute(
                f"DELETE FROM {SCHEMA}.{table} WHERE entrypoint = $1", entrypoint
            )
    finally:
        await connection.close()


async def _vacuum(url: str) -> None:
    import asyncpg  # type: ignore[import-not-found,unused-ignore]

    connection = await asyncpg.connect(dsn(url))
    try:
        for table in ("pgqueuer", "pgqueuer_log"):
            await connection.execute(f"VACUUM {SCHEMA}.{table}")
    finally:
        await connection.close()


def drain(url: str, count: int, folder: Path) -> dict[str, Any]:
    """Enqueue ``count`` jobs in batches, then run ``pgq run --mode drain`` on them.

    Its tables are vacuumed first: PgQueuer leaves that to autovacuum (its production
    setting), and on a server without it (this bench's) its tables would otherwise carry
    every earlier run's dead rows, while asynctask's transport vacuums its own.
    """
    os.environ["PGQUEUER_SCHEMA"] = SCHEMA
    _install(url)
    asyncio.run(_vacuum(url))
    entrypoint = common.queue_name("pgqueuer")
    asyncio.run(_fill(url, entrypoint, count))
    try:
        command = [common.tool("pgq"), "run", f"{MODULE}:create", "--mode", "drain"]
        os.environ.update(_environment(url))
        result = common.run_worker(command, url, entrypoint, count, folder, halts=True)
    finally:
        asyncio.run(_clean(url, entrypoint))
    result["settings"] = "durable tables, asyncpg, batch 10, tables vacuumed before each drain"
    return result


if __name__ == "__main__":
    common.main(drain)
