"""The Redis store's ``StatusFeed`` (``asynctask_redis.statusfeed``), driven directly as a
consumer of another transport drives it (``Consumer.start``, ``record_outcome``): the
cancels it must know, and the writes it sends without waiting. The stories through a
real AMQP consumer are in tests/amqp/test_status.py."""

from __future__ import annotations

import pytest

from asynctask.status import SubmitOptions
from asynctask.testing import unique_queue
from asynctask.transport import new_task_id
from asynctask_redis import statusfeed


def test_a_feed_knows_the_cancels_made_before_it_opened(transport):
    """(Fails with a feed that only hears what is published after it subscribed.)"""
    store, queue = transport.state(), unique_queue()
    kept, doomed = store.submitted(queue, [new_task_id(), new_task_id()], 0, SubmitOptions())
    assert store.cancel(doomed) is True
    feed = store.feed(queue)
    try:
        assert feed.may_start(kept) is True
        assert feed.may_start(doomed) is False
        # and one cancelled after it opened is heard on its channel
        assert store.cancel(kept) is True
        assert feed.may_start(kept) is False
    finally:
        feed.close()


def test_a_feed_lagging_far_behind_waits_for_the_replies_it_is_owed(transport, monkeypatch):
    """Past ``MOST_UNREAD`` unanswered writes a write reads every reply first, and never
    waits for one of a write not sent yet. (Fails when the new write is counted as sent
    before it is: the read times out, and the writes are made again.)"""
    monkeypatch.setattr(statusfeed, "READ_EVERY", 1)
    monkeypatch.setattr(statusfeed, "MOST_UNREAD", 2)
    store, queue = transport.state(), unique_queue()
    ids = [new_task_id() for _ in range(20)]
    store.submitted(queue, ids, 0, SubmitOptions())
    feed = store.feed(queue)
    redone: list[BaseException] = []
    monkeypatch.setattr(feed, "_redo", redone.append)
    for task_id in ids:
        feed.started(task_id, 1)
        feed.settled(task_id, "succeeded", 1, result_json="1")
        assert len(feed._sent) <= 2
    feed.close()
    assert redone == []  # no timeout, no write made again
    assert {s.state for s in store.statuses(ids) if s is not None} == {"succeeded"}


def test_a_write_made_while_redis_is_away_is_kept_with_those_before_it(transport, monkeypatch):
    """A write sent while the feed cannot reconnect, with earlier writes still to make
    again, is kept after them (made by the next call, or ``close``), not dropped: its
    call raises ``TransportUnavailable`` like the earlier one. Failed before: the second
    outcome was lost (the earlier writes' redo raised before it was queued), and its
    task stayed ``queued`` for good."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from asynctask.errors import TransportUnavailable

    store, queue = transport.state(), unique_queue()
    first, second = store.submitted(queue, [new_task_id(), new_task_id()], 0, SubmitOptions())
    feed = store.feed(queue)
    server = transport.server

    class _Away:
        def get_connection(self, *args, **kwargs):
            raise RedisConnectionError("Redis is away")

    def gave_up(fn, *args):
        raise TransportUnavailable("Redis is away (retry_timeout passed)")

    # Given a Redis that cannot be reached, and a transport whose retries give up
    with monkeypatch.context() as away:
        away.setattr(server, "pool_for", lambda key: _Away())
        away.setattr(transport, "_call", gave_up)
        # When two outcomes are written through the feed meanwhile
        # (each call is told: the write stays to be made again)
        for task_id in (first, second):
            with pytest.raises(TransportUnavailable):
                feed.settled(task_id, "succeeded", 1, result_json="1")
        # Then both wait to be made again, in order
        assert [s.task_id for s in feed._sent] == [first, second]
    # And once Redis is back, close makes them
    feed.close()
    assert [s.state if s else None for s in store.statuses([first, second])] == [
        "succeeded",
        "succeeded",
    ]
