"""The pgsql store's ``StatusFeed`` (``asynctask_pgsql.statefeed``) driven directly, as
another transport's consumer and its AMQP relay drive it: writes made by a feed in
another process (``relayable``) keep their start times and never move a status back.
The stories through a real AMQP consumer are in tests/amqp/test_status.py and
tests/amqp/test_relayed_pgsql.py."""

from __future__ import annotations

import logging
import time

from asynctask.status import SubmitOptions
from asynctask.testing import unique_queue
from asynctask.transport import new_task_id


def test_a_feed_whose_writes_another_process_makes_says_so(transport):
    """(Fails while the pgsql feed is not ``relayable``: an AMQP worker then waited for
    a commit before each ack, the relay for none.)"""
    feed = transport.state().feed(unique_queue())
    try:
        assert feed.relayable is True
    finally:
        feed.close()


def test_a_relayed_start_keeps_the_time_the_task_started(transport):
    """A start made by another process (``began``: the task's ``time.monotonic()``) and
    its success, one row of one batch, read ``started_at`` when the task started, not
    when the write was made. (Fails when ``started`` takes no ``began``.)"""
    store, queue = transport.state(), unique_queue()
    (task_id,) = store.submitted(queue, [new_task_id()], 0, SubmitOptions())
    feed = store.feed(queue)
    try:
        feed.flush(waiting=False)  # a busy consumer: its starts are held
        feed.started(task_id, 1, began=time.monotonic() - 2.0)
        assert feed.settled(task_id, "succeeded", 1, result_json='"ok"') is None
        feed.flush(waiting=False)
    finally:
        feed.close()
    status = store.statuses([task_id])[0]
    assert status is not None
    assert (status.state, status.result) == ("succeeded", "ok")
    assert status.started_at is not None and status.finished_at is not None
    assert 1.5 < status.finished_at - status.started_at < 10


def test_a_late_start_never_undoes_the_retrying_of_its_own_attempt(transport):
    """A start of attempt 1 that reaches PostgreSQL after that attempt's ``retrying``
    (the relay made the start, the worker the outcome, directly) leaves ``retrying``;
    the start of the next attempt still reads ``running``. (Fails when only final
    states are kept: the task read ``running`` through its back-off.)"""
    store, queue = transport.state(), unique_queue()
    (task_id,) = store.submitted(queue, [new_task_id()], 0, SubmitOptions())
    store.settled(queue, task_id, "retrying", 1, error="boom")
    feed = store.feed(queue)
    try:
        feed.started(task_id, 1, began=time.monotonic())  # late: the retry came first
        feed.flush(waiting=False)
        status = store.statuses([task_id])[0]
        assert status is not None and (status.state, status.attempts) == ("retrying", 1)
        feed.started(task_id, 2, began=time.monotonic())  # the next attempt's start
        feed.flush(waiting=False)
    finally:
        feed.close()
    status = store.statuses([task_id])[0]
    assert status is not None and (status.state, status.attempts) == ("running", 2)


def test_a_late_start_after_a_success_leaves_it_and_warns_of_no_cancel(transport, caplog):
    """A start that arrives after the task's success (written directly) leaves the
    success, and is not reported as a start after a cancel or an expiry. (Fails when
    the late list takes every final state but ``failed``: the warning named a task that
    was neither cancelled nor expired.)"""
    store, queue = transport.state(), unique_queue()
    (task_id,) = store.submitted(queue, [new_task_id()], 0, SubmitOptions())
    store.settled(queue, task_id, "succeeded", 1, result_json='"ok"')
    feed = store.feed(queue)
    try:
        with caplog.at_level(logging.WARNING, logger="asynctask.pgsql"):
            feed.started(task_id, 1, began=time.monotonic())  # the first: sent at once
    finally:
        feed.close()
    status = store.statuses([task_id])[0]
    assert status is not None and (status.state, status.result) == ("succeeded", "ok")
    assert not [r for r in caplog.records if "late cancel" in r.getMessage()]


def test_cancel_heard_tells_what_a_success_would(transport):
    """``cancel_heard`` reads the queue's channel without waiting: a task cancelled
    while it ran is named (the relay's caller logs its result discarded)."""
    store, queue = transport.state(), unique_queue()
    kept, doomed = store.submitted(queue, [new_task_id(), new_task_id()], 0, SubmitOptions())
    feed = store.feed(queue)
    try:
        assert feed.may_start(doomed) is True
        feed.started(doomed, 1)
        assert store.cancel(doomed) is True
        deadline = time.monotonic() + 5
        while not feed.cancel_heard(doomed):
            assert time.monotonic() < deadline, "the cancel was never heard"
            time.sleep(0.01)
        assert feed.cancel_heard(kept) is False
    finally:
        feed.close()
