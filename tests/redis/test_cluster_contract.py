"""The whole transport contract on a Redis Cluster of the test's own (3 masters, 3
replicas on loopback ports): ``redis+cluster://``."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from asynctask.testing import TransportContract
from asynctask.testing.contract import SECRET
from asynctask.testing.status import StatusContract
from tests.redis.cluster_support import LocalCluster

pytestmark = [
    pytest.mark.skipif(
        shutil.which("redis-server") is None, reason="needs redis-server and redis-cli"
    ),
    # the whole contract again on 3+3 nodes: `make test-long`; `make test` keeps the
    # cluster's own tests (test_cluster_failover.py) and the contract on one server
    pytest.mark.long,
]


class ClusterProbe:
    """Counts what the cluster holds for a queue (its keys share the queue's hash tag)."""

    def __init__(self, client: redis.RedisCluster, prefix: str, client_name: str) -> None:
        self.client = client
        self.prefix = prefix
        self.client_name = client_name

    def drop_connections(self) -> None:
        """``CLIENT KILL`` of the transport's own connections, on every node."""
        for _ in range(2):
            for node in self.client.get_nodes():
                conn = node.redis_connection
                assert conn is not None
                for info in conn.client_list():
                    if info.get("name") == self.client_name:
                        conn.client_kill_filter(_id=info["id"])
            time.sleep(0.01)

    def stored(self, queue: str) -> int:
        base = f"{self.prefix}:{{{queue}}}:"
        count = int(self.client.llen(f"{self.prefix}_{{{queue}}}"))
        count -= int(self.client.get(base + "nudges") or 0)
        count += int(self.client.zcard(base + "urgent"))
        count += int(self.client.zcard(base + "delayed"))
        count += int(self.client.zcard(base + "retrying"))
        for cid in self.client.smembers(base + "consumers"):
            count += int(self.client.llen(base + "processing:" + cid.decode()))
        return count

    def inject(self, queue: str, text: str) -> None:
        # as README.md tells another program on a cluster: RPUSH <prefix>_{<queue>} <json>
        self.client.rpush(f"{self.prefix}_{{{queue}}}", text)


class TestRedisClusterTransport(TransportContract, StatusContract):
    @pytest.fixture
    def client_name(self) -> str:
        return f"asynctask-t-{uuid.uuid4().hex[:12]}"

    @pytest.fixture
    def cluster_client(self, cluster: LocalCluster) -> Iterator[redis.RedisCluster]:
        client = cluster.client()
        yield client
        client.close()

    @pytest.fixture
    def prefix(self) -> str:
        return f"c{uuid.uuid4().hex[:10]}"

    @pytest.fixture
    def transport_uri(self, cluster: LocalCluster, prefix: str, client_name: str) -> str:
        return f"{cluster.uri}?key_prefix={prefix}&recovery_seconds=3&client_name={client_name}"

    @pytest.fixture
    def probe(
        self, cluster_client: redis.RedisCluster, prefix: str, client_name: str
    ) -> ClusterProbe:
        return ClusterProbe(cluster_client, prefix, client_name)

    @pytest.fixture
    def secret_uri(self, transport_uri: str) -> str:
        return transport_uri.replace("redis+cluster://", f"redis+cluster://:{SECRET}@", 1)
