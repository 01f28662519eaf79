"""The transports that worker, scheduler and chaos tests run on: one URI each.

Each entry checks its server with the plain driver, so a missing server skips (or, with
ASYNCTASK_REQUIRE_SERVICES=1, fails) only the tests of that transport.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

PGSQL_URI = os.environ.get("ASYNCTASK_TEST_PGSQL", "pgsql://127.0.0.1:5432/test")
REDIS_URI = os.environ.get("ASYNCTASK_TEST_REDIS", "redis://127.0.0.1:6379/0")
AMQP_URI = os.environ.get("ASYNCTASK_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//?heartbeat=1")


def _check_pgsql() -> None:
    import psycopg

    psycopg.connect("host=127.0.0.1 port=5432 dbname=test", connect_timeout=3).close()


def _check_redis() -> None:
    import redis

    redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=3).ping()


def _check_amqp() -> None:
    import kombu

    with kombu.Connection("amqp://guest:guest@127.0.0.1:5672//", connect_timeout=3) as conn:
        conn.connect()


#: name -> (URI maker given a scratch folder, server check or None)
BACKENDS: dict[str, tuple[Callable[[Path], str], Callable[[], None] | None]] = {
    "filesys": (lambda tmp: f"filesys:{tmp / 'queues'}", None),
    "pgsql": (lambda tmp: PGSQL_URI, _check_pgsql),
    "redis": (lambda tmp: REDIS_URI, _check_redis),
    "amqp": (lambda tmp: AMQP_URI, _check_amqp),
}
