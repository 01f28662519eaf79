"""The shared transport contract on Redis; the probe reads and writes with plain redis-py."""

from __future__ import annotations

import pytest
import redis

from asynctask.testing import TransportContract


class RedisProbe:
    """Counts what Redis holds for a queue and pushes text as another program would."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def stored(self, queue: str) -> int:
        # the ready list, the delayed and retrying sorted sets, every processing list
        base = f"{self.prefix}:{queue}:"
        count = int(self.client.llen(f"{self.prefix}_{queue}"))
        count += int(self.client.zcard(base + "delayed"))
        count += int(self.client.zcard(base + "retrying"))
        for key in self.client.scan_iter(match=base + "processing:*", count=1000):
            count += int(self.client.llen(key))
        return count

    def inject(self, queue: str, text: str) -> None:
        # exactly as README.md tells another program: RPUSH <prefix>_<queue> <json>
        self.client.rpush(f"{self.prefix}_{queue}", text)


class TestRedisTransport(TransportContract):
    @pytest.fixture
    def transport_uri(self, redis_uri: str) -> str:
        return redis_uri

    @pytest.fixture
    def probe(self, client: redis.Redis, key_prefix: str) -> RedisProbe:
        return RedisProbe(client, key_prefix)
