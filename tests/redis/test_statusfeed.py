"""The Redis store's ``StatusFeed`` (``asynctask_redis.statusfeed``), driven directly as a
consumer of another transport drives it (``Consumer.start``, ``record_outcome``): the
cancels it must know, and the writes it sends without waiting. The stories through a
real AMQP consumer are in tests/amqp/test_status.py."""

from __future__ import annotations

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


def test_a_feed_ignores_cancels_past_their_horizon(transport, client):
    """An entry of ``P:Q:cancelled`` stays there after its status ttl until the next cancel
    trims the set: a feed opening meanwhile must not count it (a start of that id is
    held back for nothing, and enough of them kept the feed closed, every start waiting
    for Redis). (Failed before: the feed loaded the whole set, stale ids too.)"""
    store, queue = transport.state(), unique_queue()
    stale, live = new_task_id(), new_task_id()
    (kept,) = store.submitted(queue, [new_task_id()], 0, SubmitOptions())
    seconds, micros = client.time()
    now_ms = seconds * 1000 + micros // 1000
    client.zadd(statusfeed.registry_key(transport, queue), {stale: now_ms - 1000})
    client.zadd(statusfeed.registry_key(transport, queue), {live: now_ms + 60_000})
    feed = store.feed(queue)
    try:
        assert feed.may_start(stale) is True
        assert feed.may_start(live) is False
        assert feed.may_start(kept) is True
    finally:
        feed.close()
        client.delete(statusfeed.registry_key(transport, queue))
