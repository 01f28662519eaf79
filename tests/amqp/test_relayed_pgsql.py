"""With statuses in PostgreSQL (``asynctask_state``), a relay consumer's status writes
are made by its relay (``asynctask_amqp.relayedfeed``), as with Redis: the worker waits
for no commit before it acknowledges a task, and the relay acknowledges a batch of tasks
once the one statement that wrote their outcomes is committed.

The worker's PostgreSQL is reached through ``tests/slowlink.py`` with what the client
sends 0.5 s late (dropped if the client dies): a wait for a commit shows as 0.5 s or more.
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


@pytest.fixture
def slow_pgsql_state(pgsql_state: str) -> Iterator[str]:
    """``pgsql_state`` through a link that delivers the client's bytes ``DELAY`` late."""
    link = SlowLink("127.0.0.1", 5432, delay=DELAY, upstream=True)
    try:
        yield pgsql_state.replace("//127.0.0.1/", f"//127.0.0.1:{link.port}/", 1)
    finally:
        link.close()


def _eventually(check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.01)


def _run_one(consumer: Any, reader: Any) -> float:
    """Take the queue's task, start it (``reader``, a transport straight to PostgreSQL,
    sees it ``running``) and settle it as the run loop does (the outcome written and
    flushed before the ack), then send the ack as ``reserve`` does before it returns a
    task handed over ahead (unanswered); the seconds that settle took."""
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


def test_with_state_in_pgsql_the_worker_acknowledges_without_waiting_for_a_commit(
    amqp_uri, pgsql_state, slow_pgsql_state
):
    """The run loop's flush before the ack waits for no commit in the worker: the relay
    writes and waits. (Fails while the pgsql feed is not relayable: the worker's feed
    waited for its statement's commit before each ack, 0.5 s and more here.) The outcome
    is stored all the same, and the task acknowledged after it."""
    queue = unique_queue()
    with open_transport(amqp_uri) as t, open_transport(amqp_uri) as reader:  # (relay: default)
        t.state_uri, reader.state_uri = slow_pgsql_state, pgsql_state
        (only,) = t.submit_tasks(queue, [{"n": 1}])
        with t.consumer(queue, prefetch=2) as consumer:
            took = _run_one(consumer, reader)
            assert took < DELAY / 2, took
        status = reader.wait(only, timeout=10)
        assert (status.state, status.result) == ("succeeded", "ok")
        assert status.started_at is not None and status.started_at <= status.finished_at
        assert t.queue_stats(queue).ready == 0  # (acknowledged: not handed back)


def test_with_state_in_pgsql_a_relay_killed_before_the_commit_has_acknowledged_nothing(
    amqp_uri, pgsql_state, slow_pgsql_state
):
    """The relay acknowledges a task only after the statement that wrote its outcome
    is committed: a relay killed (SIGKILL) while the statement is on its way leaves the
    task with the broker, which delivers it again."""
    queue = unique_queue()
    with open_transport(amqp_uri) as t, open_transport(amqp_uri) as reader:
        t.state_uri, reader.state_uri = slow_pgsql_state, pgsql_state
        (only,) = t.submit_tasks(queue, [{"n": 1}])
        consumer = t.consumer(queue, prefetch=2)
        try:
            _run_one(consumer, reader)
            time.sleep(DELAY / 3)  # the relay read the frame: its statement is on the link
            os.kill(consumer.relay_pid, signal.SIGKILL)
        finally:
            with contextlib.suppress(Exception):
                consumer.close()
        # the task is back (not acknowledged); its status is never final without it
        # (the link may still deliver the statement it was carrying: then succeeded)
        _eventually(lambda: reader.queue_stats(queue).ready == 1)
        assert reader.status(only).state in ("running", "succeeded")
