"""The shared transport contract on Redis; the probe reads and writes with plain redis-py."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from asynctask.testing import TransportContract
from asynctask.testing.contract import SECRET
from asynctask.testing.status import StatusContract
from asynctask.testing.supervised import SupervisedStatusContract


class RedisProbe:
    """Counts what Redis holds for a queue and pushes text as another program would."""

    def __init__(self, client: redis.Redis, prefix: str, client_name: str) -> None:
        self.client = client
        self.prefix = prefix
        self.client_name = client_name

    def drop_connections(self) -> None:
        """``CLIENT KILL`` of every connection named with the transport's own client
        name (nobody else's), as a failover or an operator would."""
        for _ in range(2):  # a heartbeat may open a connection while we kill
            for info in self.client.client_list():
                if info.get("name") == self.client_name:
                    self.client.client_kill_filter(_id=info["id"])
            time.sleep(0.01)

    def stored(self, queue: str) -> int:
        # the ready list (less the nudges it may hold: not tasks), the urgent, delayed
        # and retrying sorted sets, every processing list
        base = f"{self.prefix}:{queue}:"
        count = int(self.client.llen(f"{self.prefix}_{queue}"))
        count -= int(self.client.get(base + "nudges") or 0)
        count += int(self.client.zcard(base + "urgent"))
        count += int(self.client.zcard(base + "delayed"))
        count += int(self.client.zcard(base + "retrying"))
        for key in self.client.scan_iter(match=base + "processing:*", count=1000):
            count += int(self.client.llen(key))
        return count

    def inject(self, queue: str, text: str) -> None:
        # exactly as README.md tells another program: RPUSH <prefix>_<queue> <json>
        self.client.rpush(f"{self.prefix}_{queue}", text)


class TestRedisTransport(TransportContract, StatusContract, SupervisedStatusContract):
    @pytest.fixture
    def client_name(self) -> str:
        """A name for this test's connections only, so that it can drop them all."""
        return f"asynctask-t-{uuid.uuid4().hex[:12]}"

    @pytest.fixture
    def transport_uri(self, redis_uri: str, client_name: str) -> str:
        return f"{redis_uri}&client_name={client_name}"

    @pytest.fixture
    def probe(self, client: redis.Redis, key_prefix: str, client_name: str) -> RedisProbe:
        return RedisProbe(client, key_prefix, client_name)

    @pytest.fixture
    def secret_uri(self, redis_uri: str) -> str:
        return redis_uri.replace("redis://", f"redis://:{SECRET}@", 1)
