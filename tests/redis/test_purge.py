"""A purge of a big queue never holds the Redis server in one long script."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import redis

import asynctask_redis.scripts
import asynctask_redis.transport
from asynctask import get_transport
from asynctask.testing import unique_queue
from asynctask.transport import Transport
from chaos.private_redis import private_redis


@contextlib.contextmanager
def private_transport() -> Iterator[tuple[Transport, Callable[[], list[int]]]]:
    """A transport on a private Redis, and a call that starts recording every command's
    time (SLOWLOG at threshold 0) and, called again, returns the scripts' times (µs) since."""
    with private_redis(appendonly=False) as server:
        transport = get_transport(server.uri())
        client = redis.Redis(host=server.address, port=server.port)
        client.config_set("slowlog-log-slower-than", 0)
        client.config_set("slowlog-max-len", 100_000)

        def script_times() -> list[int]:
            times = [
                entry["duration"]
                for entry in client.slowlog_get(100_000)
                if entry["command"].split(b" ", 1)[0].upper() in (b"EVALSHA", b"EVAL", b"FCALL")
            ]
            client.slowlog_reset()
            return times

        try:
            yield transport, script_times
        finally:
            client.close()
            transport.close()


def short_scripts(times: list[int]) -> bool:
    """30 scripts or more, of like size: at most 2 over 5 times the median (SLOWLOG times
    are wall time: a loaded machine stretches a chunk or two; in make test's parallel
    groups one stretched chunk was over half the total)."""
    if len(times) < 30:
        return False
    median = sorted(times)[len(times) // 2]
    return sum(t > 5 * median for t in times) <= 2


def test_a_purge_of_a_big_queue_runs_in_short_scripts():
    """One script over a whole queue held the server for every client: at 1,000,000
    tracked tasks past Redis' 5 s busy-script limit (``make bench`` saw BUSY answers).
    Fails with the one-script purge (its one call is all of the purge's server time)."""
    with private_transport() as (transport, script_times):
        queue = unique_queue("bigpurge")
        for _ in range(30):
            transport.submit_tasks(queue, [{"n": n} for n in range(1000)])
        script_times()
        # When the queue is purged
        assert transport.purge(queue) == 30_000
        # Then it is empty, and the purge took 30 short scripts, none of them most of it
        times = script_times()
        assert transport.queue_stats(queue).ready == 0
        assert short_scripts(times), times


def test_a_purge_of_a_big_failed_store_runs_in_short_scripts(monkeypatch):
    """As above for the failed store (``purge_failed`` of all), in chunks of 100 here
    (3,000 records are quick to make). Fails with one script."""
    monkeypatch.setattr(asynctask_redis.transport, "PURGE_CHUNK", 100)
    with private_transport() as (transport, script_times):
        queue = unique_queue("bigfailed")
        transport.submit_tasks(queue, [{"n": n} for n in range(3000)])
        with transport.consumer(queue, prefetch=100) as consumer:
            for _ in range(3000):
                delivery = consumer.reserve(timeout=5)
                assert delivery is not None
                consumer.fail(delivery, "test: to the failed store")
        script_times()
        assert transport.purge_failed(queue) == 3000
        times = script_times()
        assert transport.queue_stats(queue).failed == 0
        assert transport.failed_tasks(queue) == []
        assert short_scripts(times), times


def test_a_purge_of_a_queue_fed_faster_than_it_deletes_ends(monkeypatch, transport, queue):
    """A purge deletes what was there when it began, chunk by chunk, and returns, even
    while producers add more than a chunk a call. (Looped for ever with the purge that
    went on until the queue was empty: here stopped at 50 calls by the guard below.)"""
    monkeypatch.setattr(asynctask_redis.transport, "PURGE_CHUNK", 10)
    transport.submit_tasks(queue, [{"n": n} for n in range(30)])
    real = transport._script
    calls = []

    def script_and_feed(script, name, *args):
        # a producer adds 20 tasks while each chunk of 10 is deleted
        calls.append(script)
        assert len(calls) < 50, "the purge never ends"
        found = real(script, name, *args)
        if script is asynctask_redis.scripts.PURGE:
            transport.submit_tasks(queue, [{"n": n} for n in range(20)])
        return found

    monkeypatch.setattr(transport, "_script", script_and_feed)
    assert transport.purge(queue) >= 30
    monkeypatch.setattr(transport, "_script", real)
    transport.purge(queue)
