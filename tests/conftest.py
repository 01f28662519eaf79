"""Shared fixtures: a clean settings state per test, and the transports worker tests run on."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest

from asynctask.api import close_transports
from asynctask.settings import configure
from asynctask.testing import require_service

pytest_plugins = ["process_fixtures"]


@pytest.fixture(autouse=True)
def _clean_process_state() -> Iterator[None]:
    # Each test starts from loaded-on-demand settings and closes what it opened.
    configure(None)
    yield
    configure(None)
    close_transports()


@pytest.fixture
def pgsql_state() -> Iterator[str]:
    """An ``asynctask_state`` URI on the shared PostgreSQL, in a schema of this test's
    own (dropped after); skipped where asynctask-pgsql or the server is missing."""
    psycopg = pytest.importorskip("psycopg")
    pytest.importorskip("asynctask_pgsql")
    conninfo = "host=127.0.0.1 dbname=test"
    require_service("PostgreSQL at 127.0.0.1", lambda: psycopg.connect(conninfo).close())
    schema = f"asynctask_t_{uuid.uuid4().hex[:10]}"
    try:
        yield f"pgsql://127.0.0.1/test?schema={schema}"
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


#: the Redis a test keeps its statuses in (``asynctask_state``), as the redis tests use
REDIS_STATE_SERVER = "redis://127.0.0.1:6379/9"


@contextlib.contextmanager
def redis_state_uri(options: str = "") -> Iterator[str]:
    """An ``asynctask_state`` URI on Redis with a key prefix of its own (its keys deleted
    after), with ``options`` (``&name=value...``) appended; skipped where
    asynctask-redis or the server is missing."""
    redis = pytest.importorskip("redis")
    pytest.importorskip("asynctask_redis")
    client = redis.Redis.from_url(REDIS_STATE_SERVER)
    require_service("Redis at 127.0.0.1:6379", client.ping)
    prefix = f"t{uuid.uuid4().hex[:10]}"
    try:
        yield f"{REDIS_STATE_SERVER}?key_prefix={prefix}{options}"
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture
def redis_state() -> Iterator[str]:
    """``redis_state_uri`` for one test."""
    with redis_state_uri() as uri:
        yield uri
