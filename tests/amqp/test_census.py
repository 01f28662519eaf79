"""``queues()`` asks the broker about every queue at once, not one round trip at a time.

AMQP has no call that lists queues or counts many: each count is a passive
``queue.declare`` (4 a queue: the queue, its failed store, its two old per-queue ladders).
Asked one after another, 1,000 queues took seconds (issue 12 section 3: the web
dashboard and Prometheus call ``queues()``). Counted here as round trips: every answer
of the broker reaches the client ``DELAY`` seconds late (``tests/slowlink.py``),
so a call of ``n`` round trips takes at least ``n * DELAY`` longer than the same call
on a straight connection, whatever the load.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from asynctask.api import get_transport
from asynctask.transport import QueueStats
from tests.amqp.conftest import PASSWORD, USER, rabbitmqctl
from tests.slowlink import SlowLink

#: seconds each of the broker's answers is held back
DELAY = 0.05
#: the queues listed
QUEUES = 300
#: at most this many round trips for one ``queues()`` of ``QUEUES`` queues (one after
#: another: over 4 a queue, 1,200 and more; asked at once, about 20)
MOST_ROUND_TRIPS = 200


@pytest.fixture
def own_vhost(amqp_uri: str) -> Iterator[str]:
    """A vhost of this test's own on the session's broker (its registry holds only this
    test's queues), with the session's user; deleted after."""
    if USER not in amqp_uri:
        pytest.skip("needs the session's own user and rabbitmqctl (conftest.amqp_uri)")
    vhost = f"asynctask_census_{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, USER, ".*", ".*", ".*")
        yield vhost
    finally:
        rabbitmqctl("delete_vhost", vhost)


def test_queues_costs_a_few_round_trips_not_several_a_queue(own_vhost: str) -> None:
    # Given 300 queues holding a task each, one with a failed task too
    fast = get_transport(f"amqp://{USER}:{PASSWORD}@127.0.0.1:5672/{own_vhost}")
    names = [f"census_{i:03d}" for i in range(QUEUES)]
    for name in names:
        fast.submit_task(name, {"n": 1})
    consumer = fast.consumer(names[0])
    delivery = consumer.reserve(5)
    assert delivery is not None
    consumer.fail(delivery, "boom")
    consumer.close()
    fast.submit_task(names[0], {"n": 2})
    link = SlowLink("127.0.0.1", 5672, DELAY)
    slow = get_transport(f"amqp://{USER}:{PASSWORD}@127.0.0.1:{link.port}/{own_vhost}")
    straight = get_transport(f"amqp://{USER}:{PASSWORD}@127.0.0.1:5672/{own_vhost}")
    try:
        for transport in (slow, straight):  # connected (start-up is not counted)
            transport.queue_stats(names[1])
        began = time.monotonic()
        assert len(straight.queues()) == QUEUES
        work = time.monotonic() - began  # the broker's and the client's, at this load
        found: list[list[QueueStats]] = []

        # When queues() is called through a link whose answers arrive DELAY s late
        began = time.monotonic()
        call = threading.Thread(target=lambda: found.append(slow.queues()), daemon=True)
        call.start()
        call.join(work + MOST_ROUND_TRIPS * DELAY)
        took = time.monotonic() - began

        # Then it answers within MOST_ROUND_TRIPS round trips, every queue counted
        assert not call.is_alive(), (
            f"queues() of {QUEUES} queues still running after {took:.1f} s, {work:.1f} s "
            f"straight: over {MOST_ROUND_TRIPS} round trips of {DELAY} s"
        )
        stats = {s.name: s for s in found[0]}
        assert sorted(stats) == names
        assert all(stats[name].ready == 1 for name in names[1:])
        assert (stats[names[0]].ready, stats[names[0]].failed) == (1, 1)
        assert slow.queue_stats(names[0]).failed == 1
    finally:
        slow.close()
        straight.close()
        link.close()
        fast.close()
