"""The adaptive window (``asynctask.window``): with no prefetch set, a consumer takes
32 unacknowledged tasks for a drain of short ones, and fewer as tasks get long, so that
the last of its window starts within ``window_budget`` (RabbitMQ's ``consumer_timeout``
counts from delivery); a prefetch the user set stays as it is. Read from the broker:
``rabbitmqctl list_consumers`` (the consumer's prefetch) and ``list_queues`` (unacked)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from asynctask.testing import unique_queue
from asynctask.testing.contract import open_transport
from asynctask.transport import Transport
from tests.amqp.conftest import rabbitmqctl, vhost_of


@pytest.fixture
def transports() -> Iterator[Callable[[str], Transport]]:
    """Opens transports, closed (with their consumers) after the test, whatever it did."""
    opened: list[Transport] = []

    def open_one(uri: str) -> Transport:
        opened.append(open_transport(uri))
        return opened[-1]

    yield open_one
    for transport in opened:
        transport.close()


def consumer_prefetch(uri: str, queue: str) -> list[int]:
    """The prefetch of each consumer of ``queue``, as the broker holds it."""
    listed = rabbitmqctl(
        "list_consumers", "-p", vhost_of(uri), "-q", "--no-table-headers", "queue_name",
        "prefetch_count",
    )  # fmt: skip
    return [
        int(line.split("\t")[1]) for line in listed.splitlines() if line.split("\t")[0] == queue
    ]


def unacked(uri: str, queue: str) -> int:
    """Messages of ``queue`` delivered to a consumer and not acknowledged: its window."""
    listed = rabbitmqctl(
        "list_queues", "-p", vhost_of(uri), "-q", "--no-table-headers", "name",
        "messages_unacknowledged",
    )  # fmt: skip
    [count] = [
        int(line.split("\t")[1]) for line in listed.splitlines() if line.split("\t")[0] == queue
    ]
    return count


@pytest.mark.parametrize("relay", ["true", "false"])
def test_a_drain_of_short_tasks_runs_at_the_large_window(
    amqp_uri: str, relay: str, transports: Callable[[str], Transport]
) -> None:
    # Given 200 tasks and a consumer with the transport's default prefetch
    uri = f"{amqp_uri}?relay={relay}"
    queue = unique_queue("window_drain")
    transport = transports(uri)
    transport.submit_tasks(queue, [{"n": n} for n in range(200)])
    consumer = transport.consumer(queue, prefetch=transport.default_prefetch)
    # When 100 no-op tasks are run
    for _ in range(100):
        delivery = consumer.reserve(10)
        assert delivery is not None
        consumer.ack(delivery)
    time.sleep(0.5)  # the broker has refilled the window
    # Then the broker holds the consumer at 32, and 32 tasks are out in its window
    assert consumer_prefetch(uri, queue) == [32]
    assert unacked(uri, queue) == 32
    consumer.close()
    transport.close()


@pytest.mark.parametrize("relay", ["true", "false"])
def test_long_tasks_shrink_the_window_to_start_the_last_within_the_budget(
    amqp_uri: str, relay: str, transports: Callable[[str], Transport]
) -> None:
    # Given tasks of 1.5 s, and a budget of 3 s: the last of a window of 3 starts in 3 s
    uri = f"{amqp_uri}?relay={relay}&window_budget=3"
    queue = unique_queue("window_long")
    transport = transports(uri)
    transport.submit_tasks(queue, [{"n": n} for n in range(40)])
    consumer = transport.consumer(queue, prefetch=transport.default_prefetch)
    # When 6 of them run, the window read from the broker while each runs (past the first:
    # it ran at the large window, the one thing known no run time yet)
    seen, took = [], []
    for n in range(6):
        delivery = consumer.reserve(10)
        assert delivery is not None
        started = time.monotonic()
        if n >= 2:
            seen.append(unacked(uri, queue))
        time.sleep(max(0.0, 1.5 - (time.monotonic() - started)))
        took.append(time.monotonic() - started)
        consumer.ack(delivery)
    # Then no message waited in the window past the budget: the window holds the running
    # task and at most as many as start within 3 s behind it
    most = 1 + int(3 // min(took))  # (1.5 s and a little: 2)
    assert max(seen) <= most, (seen, took)
    [prefetch] = consumer_prefetch(uri, queue)
    assert 1 <= prefetch <= most, (prefetch, took)
    consumer.close()
    # And every task is still there, to run (those handed back are not counted attempts)
    stats = transport.queue_stats(queue)
    assert stats.ready == 34, stats
    again = transport.consumer(queue, prefetch=40)
    attempts = set()
    for _ in range(34):
        delivery = again.reserve(10)
        assert delivery is not None
        attempts.add(delivery.attempt)
        again.ack(delivery)
    assert attempts == {1}
    again.close()
    transport.close()


@pytest.mark.parametrize("relay", ["true", "false"])
def test_a_prefetch_the_user_set_stays_as_it_is(
    amqp_uri: str, relay: str, transports: Callable[[str], Transport]
) -> None:
    # Given a consumer whose prefetch the user set (32, as the default's start), and a
    # budget that tasks of 0.5 s would shrink an adaptive window for (to 2)
    uri = f"{amqp_uri}?relay={relay}&window_budget=0.5"
    queue = unique_queue("window_user")
    transport = transports(uri)
    transport.submit_tasks(queue, [{"n": n} for n in range(40)])
    consumer = transport.consumer(queue, prefetch=32)
    # When 4 such tasks run
    for _ in range(4):
        delivery = consumer.reserve(10)
        assert delivery is not None
        time.sleep(0.5)
        consumer.ack(delivery)
    time.sleep(0.5)
    # Then the window is still 32
    assert consumer_prefetch(uri, queue) == [32]
    assert unacked(uri, queue) == 32
    consumer.close()
    transport.close()


def test_the_window_follows_the_run_time() -> None:
    from asynctask.window import Window

    window = Window(32, budget=60.0)
    assert window.target() == 32  # nothing known: the largest
    window.started(now=0.0)
    window.settled(now=10.0)  # one task of 10 s: 1 running + 6 behind it within 60 s
    assert window.target() == 7
    assert window.resize_to(32) == 7
    window.settled(4, now=10.004)  # 4 no-op tasks settled together: 1 ms each
    assert window.resize_to(7) is None  # the average is still 7 s: 9
    for n in range(30):
        window.settled(now=10.01 + n * 0.001)
    assert window.resize_to(7) == 32  # short again: back to the largest
    window.idle()
    window.started(now=100.0)
    window.settled(now=1000.0)  # one very long task: never below 1
    assert Window(32, 60.0).resize_to(32) is None
    assert window.target() >= 1
