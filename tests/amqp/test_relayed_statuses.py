"""A relay consumer's status writes made by its relay (``asynctask_amqp.relayedfeed``),
with statuses in Redis or in PostgreSQL (``asynctask_state``): the worker waits for no
reply of the store before it acknowledges a task, and the relay acknowledges a task only
once its outcome's write is answered (Redis) or committed (PostgreSQL: one statement for
the batch).

The store is reached through ``tests/slowlink.py`` with what the client sends 0.5 s late
(dropped if the client dies): a wait for a reply shows as 0.5 s or more, and a write
that a killed process sent never arrives.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from asynctask.attempts import record
from asynctask.testing import unique_queue
from asynctask.testing.contract import open_transport
from slowlink import SlowLink

DELAY = 0.5


#: each state store's fixture, the part of its URI naming the server, and the port there
STORES = {"redis": ("redis_state", ":6379/", 6379), "pgsql": ("pgsql_state", "//127.0.0.1/", 5432)}


@pytest.fixture(params=sorted(STORES))
def states(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """(the store's URI through a link that delivers the client's bytes ``DELAY`` late,
    its URI straight): Redis, then PostgreSQL."""
    fixture, server, port = STORES[request.param]
    state: str = request.getfixturevalue(fixture)
    link = SlowLink("127.0.0.1", port, delay=DELAY, upstream=True)
    try:
        through = f":{link.port}/" if port == 6379 else f"//127.0.0.1:{link.port}/"
        slow = state.replace(server, through, 1)
        assert slow != state, (state, server)
        yield slow, state
    finally:
        link.close()


def _eventually(check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.01)


def _run_one(consumer: Any, reader: Any) -> float:
    """Take the queue's task, start it (``reader``, a transport straight to Redis, sees
    it ``running``) and settle it as the run loop does (the outcome written and flushed
    before the ack: ``send_now``), then send the ack as ``reserve`` does before it
    returns a task handed over ahead (unanswered); the seconds that settle took."""
    delivery = consumer.reserve(timeout=10)
    assert delivery is not None
    assert consumer.start(delivery) == "run"
    _eventually(lambda: reader.status(delivery.id).state == "running")
    began = time.monotonic()
    record(consumer, delivery, "succeeded", result_json='"ok"', send_now=True)
    consumer.ack(delivery)
    with consumer._lock:
        consumer._settled()
    return time.monotonic() - began


def test_the_worker_acknowledges_without_waiting_for_the_store(amqp_uri, states):
    """The run loop's flush before the ack waits for no reply in the worker: the relay
    writes and waits. (Fails when the worker's own feed waits for every reply before
    the ack, as it did, or while the pgsql feed was not relayable: the settle took 0.5 s
    and more.) The outcome is stored all the same, and the task acknowledged after it."""
    slow_state, state = states
    queue = unique_queue()
    with open_transport(amqp_uri) as t, open_transport(amqp_uri) as reader:  # (relay: default)
        t.state_uri, reader.state_uri = slow_state, state
        (only,) = t.submit_tasks(queue, [{"n": 1}])
        with t.consumer(queue, prefetch=2) as consumer:
            took = _run_one(consumer, reader)
            assert took < DELAY / 2, took
        status = reader.wait(only, timeout=10)
        assert (status.state, status.result) == ("succeeded", "ok")
        assert status.started_at is not None and status.started_at <= status.finished_at
        assert t.queue_stats(queue).ready == 0  # (acknowledged: not handed back)


def test_a_relay_killed_before_the_store_answered_has_acknowledged_nothing(amqp_uri, states):
    """The relay acknowledges a task only after the store answered its outcome's write:
    a relay killed (SIGKILL) while the write is on its way leaves the task with the
    broker, which delivers it again. (Fails when the relay acks before it writes: the
    task is gone from the queue while its write was still on the link, which could
    have dropped it: ``running`` for good.)"""
    slow_state, state = states
    queue = unique_queue()
    with open_transport(amqp_uri) as t, open_transport(amqp_uri) as reader:
        t.state_uri, reader.state_uri = slow_state, state
        (only,) = t.submit_tasks(queue, [{"n": 1}])
        consumer = t.consumer(queue, prefetch=2)
        try:
            _run_one(consumer, reader)
            time.sleep(DELAY / 3)  # the relay read the frame: its write is on the link
            os.kill(consumer.relay_pid, signal.SIGKILL)
        finally:
            with contextlib.suppress(Exception):
                consumer.close()
        # the task is back (not acknowledged); its status is never final without it
        # (the link may still deliver the write it was carrying: then succeeded)
        _eventually(lambda: reader.queue_stats(queue).ready == 1)
        assert reader.status(only).state in ("running", "succeeded")
