"""The delay ladder is shared by every queue of a vhost (issue 14 part 5): a bounded
number of broker queues however many task queues there are, and the per-queue ladders of
earlier versions keep delivering until they drain."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import amqp
import kombu
import pytest

from asynctask.testing import unique_queue
from asynctask.testing.contract import open_transport
from asynctask.transport import Transport
from asynctask_amqp.topology import RUNGS
from tests.amqp.conftest import rabbitmqctl, vhost_of


def _broker_queues(vhost: str) -> list[str]:
    listing = rabbitmqctl("list_queues", "-p", vhost, "-q", "--no-table-headers", "name")
    return sorted(line.strip() for line in listing.splitlines() if line.strip())


def test_three_queues_with_delays_and_retries_share_one_ladder(amqp_uri):
    # Given three queues, each with a delayed task, a task waiting for its retry and a
    # task delayed past the longest rung
    queues = [unique_queue("ladder") for _ in range(3)]
    with open_transport(amqp_uri) as transport:
        for queue in queues:
            transport.submit_task(queue, {"n": 1}, delay=60)
            transport.submit_task(queue, {"n": 2}, delay=30 * 24 * 3600)
            transport.submit_task(queue, {"n": 3})
            with transport.consumer(queue) as consumer:
                delivery = consumer.reserve(timeout=5)
                assert delivery is not None
                consumer.retry(delivery, delay=60, error="later")
        # Then the broker holds the three task queues and one ladder for the vhost (the
        # vhost is this test session's: other tests' queues are in it too)
        names = _broker_queues(vhost_of(amqp_uri))
        ours = [n for n in names if n.startswith(tuple(queues))]
        assert ours == sorted(queues), ours
        ladder = [n for n in names if n.startswith("asynctask.ladder.")]
        assert len(ladder) == len(RUNGS), ladder
        # and each queue's counts are its own
        for queue in queues:
            stats = transport.queue_stats(queue)
            assert (stats.ready, stats.delayed, stats.retrying) == (0, 2, 1), stats
        assert set(queues) <= {s.name for s in transport.queues()}
        # When one queue is purged, only its own waiting tasks go
        assert transport.purge(queues[0]) == 3
        emptied = transport.queue_stats(queues[0])
        assert (emptied.delayed, emptied.retrying) == (0, 0)
        assert transport.queue_stats(queues[1]).delayed == 2


def _old_rung(channel: Any, queue: str, ms: int) -> str:
    """An old-style per-queue rung, declared as asynctask 0.x did."""
    name = f"{queue}.delay.{ms}"
    channel.queue_declare(
        name,
        durable=True,
        auto_delete=False,
        arguments={
            "x-message-ttl": ms,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue,
            "x-expires": (604800 + 7200) * 1000,
        },
    )
    return name


@pytest.fixture
def transport(amqp_uri: str) -> Iterator[Transport]:
    transport = open_transport(amqp_uri)
    yield transport
    transport.close()


def test_an_old_per_queue_ladder_keeps_delivering_until_it_drains(transport, amqp_uri):
    # Given a queue and two old-style rungs of its own, each holding a task
    queue = unique_queue("oldrung")
    transport.submit_task(queue, {"n": 0})
    assert transport.get_task(queue) == {"n": 0}
    with kombu.Connection(amqp_uri) as connection:
        channel = connection.default_channel
        short, long = _old_rung(channel, queue, 500), _old_rung(channel, queue, 3_600_000)
        for name, n in ((short, 1), (long, 2)):
            message = amqp.Message(f'{{"n": {n}}}'.encode(), delivery_mode=2)
            channel.basic_publish(message, exchange="", routing_key=name)
        deadline = time.monotonic() + 5
        while channel.queue_declare(long, passive=True).message_count < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # Then the old rungs' tasks count as delayed
        assert transport.queue_stats(queue).delayed >= 1
        # and the short one's task arrives in its queue when due
        with transport.consumer(queue) as consumer:
            delivery = consumer.reserve(timeout=10)
            assert delivery is not None and delivery.payload == {"n": 1}
            consumer.ack(delivery)
        # and a purge removes the long one's
        assert transport.queue_stats(queue).delayed == 1
        assert transport.purge(queue) == 1
        assert channel.queue_declare(long, passive=True).message_count == 0
        channel.queue_delete(short)
        channel.queue_delete(long)
