"""Fixtures for the redis transport's tests: a private key prefix on database 9."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from asynctask.testing import require_service
from asynctask.testing.contract import open_transport
from asynctask.testing.services import unique_queue
from asynctask_redis.transport import RedisTransport
from tests.redis.cluster_support import LocalCluster

SERVER = "redis://127.0.0.1:6379/9"


@pytest.fixture(scope="session")
def key_prefix() -> Iterator[str]:
    """A prefix no other test run uses; its keys are deleted after the session."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    yield prefix
    try:
        client = redis.Redis.from_url(SERVER)
        for pattern in (f"{prefix}_*", f"{prefix}:*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                client.delete(*keys)
        client.close()
    except redis.RedisError:
        pass


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    """Plain redis-py on the test database (skips when Redis is down)."""
    client = redis.Redis.from_url(SERVER)
    require_service("Redis at 127.0.0.1:6379", client.ping)
    yield client
    client.close()


@pytest.fixture
def redis_uri(client: redis.Redis, key_prefix: str) -> str:
    """A transport URI on the test database, with a short recovery time."""
    return f"{SERVER}?key_prefix={key_prefix}&recovery_seconds=3"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A 3-master, 3-replica Redis Cluster of the test module's own, removed after it."""
    local = LocalCluster()
    try:
        local.start()
        yield local
    finally:
        local.stop()


@pytest.fixture
def queue() -> str:
    """A queue name of this test's own."""
    return unique_queue()


@pytest.fixture
def transport(redis_uri: str) -> Iterator[RedisTransport]:
    """A redis transport on the shared server, under this session's key prefix (a test
    module or contract class may define its own)."""
    t = open_transport(redis_uri)
    assert isinstance(t, RedisTransport)
    yield t
    t.close()
