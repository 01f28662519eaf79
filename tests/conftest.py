"""Shared fixtures: a clean settings state per test, and the transports worker tests run on."""

from __future__ import annotations

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
