"""Looking never changes anything (issue 14, section 2).

``queues``, ``failed list``, ``settings``, ``plugins`` and ``schedule`` create no
schema, table, key, queue, exchange or folder on any transport. Each backend is looked
at through its own client before and after, in a place of the test's own: a folder that
does not exist, a schema nobody made, a key prefix nobody used, a vhost of our own.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from asynctask.testing import require_service
from backends import BACKENDS
from clitools import run_asynctask

LOOKS = (
    ["queues"],
    ["queues", "--json"],
    ["failed", "list", "look_queue"],
    ["settings"],
    ["plugins"],
    ["schedule"],
)
#: an id no store ever had
UNKNOWN_ID = "0" * 32
Snapshot = Callable[[], object]


def _pgsql(tmp_path: Path) -> Iterator[tuple[str, Snapshot]]:
    import psycopg

    schema = f"look_{uuid.uuid4().hex[:10]}"

    def snapshot() -> object:
        with psycopg.connect("host=127.0.0.1 port=5432 dbname=test", autocommit=True) as conn:
            return conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname = %s", (schema,)
            ).fetchall()

    yield f"pgsql://127.0.0.1:5432/test?schema={schema}", snapshot
    with psycopg.connect("host=127.0.0.1 port=5432 dbname=test", autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def _redis(tmp_path: Path) -> Iterator[tuple[str, Snapshot]]:
    import redis

    prefix = f"look-{uuid.uuid4().hex[:10]}"
    client = redis.Redis(host="127.0.0.1", port=6379, db=0)

    def snapshot() -> object:
        return sorted(client.scan_iter(match=f"{prefix}*"))

    yield f"redis://127.0.0.1:6379/0?key_prefix={prefix}", snapshot
    client.close()


def _amqp(tmp_path: Path) -> Iterator[tuple[str, Snapshot]]:
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not on PATH: no vhost of our own")
    vhost = f"look_{uuid.uuid4().hex[:10]}"

    def ctl(*args: str) -> str:
        return subprocess.run(
            ["rabbitmqctl", "-q", *args], capture_output=True, text=True, check=True, timeout=60
        ).stdout

    ctl("add_vhost", vhost)
    ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")

    def snapshot() -> object:
        queues = ctl("list_queues", "-p", vhost, "name").split()
        exchanges = ctl("list_exchanges", "-p", vhost, "name").split()
        return sorted(queues), sorted(exchanges)  # the broker lists them in any order

    try:
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}", snapshot
    finally:
        ctl("delete_vhost", vhost)


def _filesys(tmp_path: Path) -> Iterator[tuple[str, Snapshot]]:
    folder = tmp_path / "never_made"

    def snapshot() -> object:
        return sorted(str(p) for p in tmp_path.rglob("*"))

    yield f"filesys:{folder}", snapshot


def _localmem(tmp_path: Path) -> Iterator[tuple[str, Snapshot]]:
    yield "localmem:", lambda: None  # one process: a command's process ends with it


PLACES = {
    "filesys": _filesys,
    "pgsql": _pgsql,
    "redis": _redis,
    "amqp": _amqp,
    "localmem": _localmem,
}


@pytest.fixture(params=sorted(PLACES))
def place(request, tmp_path) -> Iterator[tuple[str, Snapshot]]:
    name = request.param
    check = BACKENDS[name][1] if name in BACKENDS else None
    if check is not None:
        require_service(name, check)
    yield from PLACES[name](tmp_path)


@pytest.mark.timeout(300)  # rabbitmqctl takes seconds a call on a busy machine
def test_looking_creates_nothing(place, tmp_path):
    uri, snapshot = place
    # Given a place nothing was ever stored in
    before = snapshot()
    # When every looking command runs on it
    for args in LOOKS:
        result = run_asynctask(*args, uri=uri, cwd=tmp_path)
        # Then each one answers (an empty listing)
        assert result.code == 0, (args, result.err)
    # And asking after a task the place never had answers "no task" (AMQP, keeping no
    # status itself, names the setting that would)
    for args in (["task", UNKNOWN_ID], ["wait", UNKNOWN_ID, "--timeout", "0"]):
        result = run_asynctask(*args, uri=uri, cwd=tmp_path)
        if uri.startswith("amqp"):
            assert result.code == 2 and "asynctask_state" in result.err, (args, result.err)
        else:
            assert result.code == 1 and "no task" in result.err, (args, result.err)
    # And the backend holds nothing more than before
    assert snapshot() == before
