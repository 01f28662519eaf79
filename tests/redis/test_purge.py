"""A purge of a big queue never holds the Redis server in one long script."""

from __future__ import annotations

import redis

from asynctask import get_transport
from asynctask.testing import unique_queue
from chaos.private_redis import private_redis


def test_a_purge_of_a_big_queue_runs_in_short_scripts():
    """One script over a whole queue held the server for every client: at 1,000,000
    tracked tasks past Redis' 5 s busy-script limit (``make bench`` saw BUSY answers).
    Fails with the one-script purge (its one call is all of the purge's server time)."""
    with private_redis(appendonly=False) as server:
        transport = get_transport(server.uri())
        queue = unique_queue("bigpurge")
        for _ in range(30):
            transport.submit_tasks(queue, [{"n": n} for n in range(1000)])
        client = redis.Redis(host=server.address, port=server.port)
        client.config_set("slowlog-log-slower-than", 0)
        client.config_set("slowlog-max-len", 100_000)
        client.slowlog_reset()
        # When the queue is purged
        assert transport.purge(queue) == 30_000
        # Then it is empty, and no script took more than a fifth of the purge's time
        scripts = [
            entry["duration"]
            for entry in client.slowlog_get(100_000)
            if entry["command"].split(b" ", 1)[0].upper() in (b"EVALSHA", b"EVAL", b"FCALL")
        ]
        assert transport.queue_stats(queue).ready == 0
        assert scripts and max(scripts) < 0.2 * sum(scripts), (max(scripts), sum(scripts))
        client.close()
        transport.close()
