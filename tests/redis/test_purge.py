"""A purge of a big queue never holds the Redis server in one long script."""

from __future__ import annotations

import redis

import asynctask_redis.transport
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
        # Then it is empty, and the purge took 30 short scripts, none of them most of it
        # (slowlog times are wall time: a loaded machine can stretch one chunk)
        scripts = [
            entry["duration"]
            for entry in client.slowlog_get(100_000)
            if entry["command"].split(b" ", 1)[0].upper() in (b"EVALSHA", b"EVAL", b"FCALL")
        ]
        assert transport.queue_stats(queue).ready == 0
        assert len(scripts) >= 30 and max(scripts) < 0.5 * sum(scripts), scripts
        client.close()
        transport.close()


def test_a_purge_of_a_big_failed_store_runs_in_short_scripts(monkeypatch):
    """As above for the failed store (``purge_failed`` of all), in chunks of 100 here
    (3,000 records are quick to make). Fails with one script."""
    monkeypatch.setattr(asynctask_redis.transport, "PURGE_CHUNK", 100)
    with private_redis(appendonly=False) as server:
        transport = get_transport(server.uri())
        queue = unique_queue("bigfailed")
        transport.submit_tasks(queue, [{"n": n} for n in range(3000)])
        with transport.consumer(queue, prefetch=100) as consumer:
            for _ in range(3000):
                delivery = consumer.reserve(timeout=5)
                assert delivery is not None
                consumer.fail(delivery, "test: to the failed store")
        client = redis.Redis(host=server.address, port=server.port)
        client.config_set("slowlog-log-slower-than", 0)
        client.config_set("slowlog-max-len", 100_000)
        client.slowlog_reset()
        assert transport.purge_failed(queue) == 3000
        scripts = [
            entry["duration"]
            for entry in client.slowlog_get(100_000)
            if entry["command"].split(b" ", 1)[0].upper() in (b"EVALSHA", b"EVAL", b"FCALL")
        ]
        assert transport.queue_stats(queue).failed == 0
        assert transport.failed_tasks(queue) == []
        assert len(scripts) >= 30 and max(scripts) < 0.5 * sum(scripts), scripts
        client.close()
        transport.close()
