"""A Redis Cluster of a test's own: 3 masters and 3 replicas on free loopback ports
(``chaos.redis_ha.RedisCluster``, which ``make chaos`` and the WAIT tests start too)."""

from __future__ import annotations

import redis

from chaos.redis_ha import LOOPBACK, RedisCluster


class LocalCluster(RedisCluster):
    """The chaos suite's cluster, with a redis-py client for the tests' checks."""

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host=LOOPBACK, port=self.ports[0])

    def stop(self) -> None:
        self.remove()
