"""The hot path of a consumer: the ``NEXT`` script moves and acks in batches.

``NEXT`` takes a whole prefetch with a few commands (the urgent tasks first, then the
ready list's head; tracked, the first it hands out checked and marked running) and
removes the acks of a consumer that settled in order with one ``LTRIM``; any other order
falls back to one ``LREM`` an ack. The batch comes back as one string joined by
newlines, or as items when a message holds one. These call the script itself, as the
consumer does between two maintenance calls.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from asynctask_redis import scripts
from asynctask_redis.consumer import NUDGE, taken
from asynctask_redis.transport import RedisTransport

CONSUMER = "host.batchtest"


def _next(
    t: RedisTransport, client: redis.Redis, queue: str, want: int, acks: list[bytes] = ()
) -> list[bytes]:
    """One untracked ``NEXT`` call; the messages it took."""
    triples = [part for raw in acks for part in (raw, "", "")]
    args = [t.prefix, t.script_queue(queue), CONSUMER, want, "0", t.status_ttl_ms, "", ""]
    reply = client.eval(scripts.NEXT.text, 0, *args, len(acks), *triples)
    assert reply[0] == 0, "nothing is marked running without tracking"
    return taken(reply, 1)


def _numbers(messages: list[bytes]) -> list[object]:
    return [json.loads(m)["payload"]["n"] for m in messages]


def _processing(t: RedisTransport, client: redis.Redis, queue: str) -> list[bytes]:
    return list(client.lrange(t.key(queue, f"processing:{CONSUMER}"), 0, -1))


def test_a_batch_takes_the_urgent_first_then_the_ready_list_in_order(transport, queue, client):
    # Given an urgent task submitted to an empty queue (a nudge goes to the ready list to
    # wake a blocked consumer), eight plain ones, then a more urgent one
    t = transport
    t.submit_task(queue, {"n": "p5"}, priority=5)
    t.submit_tasks(queue, [{"n": n} for n in range(8)])
    t.submit_task(queue, {"n": "p9"}, priority=9)
    assert client.lrange(t.ready_key(queue), 0, 0) == [NUDGE]
    # When an untracked consumer takes six in one call
    got = _next(t, client, queue, 6)
    # Then the most urgent come first, then the ready list's head in order, and the
    # nudge is dropped, not handed out
    assert _numbers(got) == ["p9", "p5", 0, 1, 2, 3]
    assert _processing(t, client, queue) == got
    assert int(client.get(t.key(queue, "nudges")) or 0) == 0
    # When it acks the first three, in the order it took them, taking two more
    more = _next(t, client, queue, 2, acks=got[:3])
    # Then it holds the other three and the two new ones
    assert _numbers(more) == [4, 5]
    assert _processing(t, client, queue) == got[3:] + more
    # When it acks two out of order, taking the rest of the queue
    rest = _next(t, client, queue, 4, acks=[got[4], got[3]])
    # Then those two are gone, the others are held in order
    assert _numbers(rest) == [6, 7]
    assert _processing(t, client, queue) == [got[5], *more, *rest]
    assert client.llen(t.ready_key(queue)) == 0
    # When it acks everything it holds
    assert _next(t, client, queue, 4, acks=[got[5], *more, *rest]) == []
    # Then nothing is held any more
    assert _processing(t, client, queue) == []


def test_an_ack_of_a_message_no_longer_held_removes_nothing_else(transport, queue, client):
    # Given a consumer holding three tasks
    t = transport
    t.submit_tasks(queue, [{"n": n} for n in range(3)])
    got = _next(t, client, queue, 3)
    # When it acks the first and one it does not hold (recovered by another consumer)
    stranger = b'{"__asynctask__":1,"id":"x","attempts":0,"submitted_at":null,"payload":{}}'
    _next(t, client, queue, 1, acks=[got[0], stranger])
    # Then only the first is gone
    assert _processing(t, client, queue) == got[1:]


def _tracked_next(t: RedisTransport, client: redis.Redis, queue: str, want: int) -> list[Any]:
    """One tracked ``NEXT`` call (the first task marked running): its reply, the taken
    messages read as the consumer reads them."""
    args = [t.prefix, t.script_queue(queue), CONSUMER, want, "1", t.status_ttl_ms, "", ""]
    reply = client.eval(scripts.NEXT.text, 0, *args, 0)
    return [reply[0], taken(reply, 1)]


def test_a_tracked_batch_drops_an_expired_first_task_and_marks_the_next(transport, queue, client):
    # Given a task that expires at once, then two plain ones, no cancel pending (the
    # move takes them in bulk and checks only the first it hands out)
    t = transport
    first = t.submit_task(queue, {"n": 0}, expires=0.001)
    second, third = t.submit_tasks(queue, [{"n": 1}, {"n": 2}])
    expires_ms = int(client.hget(t.key(queue, f"task:{first}"), "expires_at"))
    while (lambda s: int(s[0]) * 1000 + int(s[1]) // 1000)(client.time()) <= expires_ms:
        pass  # the server's clock past the expiry (a millisecond or two)
    # When a tracked consumer takes three in one call
    started, got = _tracked_next(t, client, queue, 3)
    # Then the expired one is gone, never handed out; the next is marked running in its
    # place, the last waits queued; the consumer holds exactly those two
    assert _numbers(got) == [1, 2]
    assert started == 1
    assert _processing(t, client, queue) == got
    assert client.hget(t.key(queue, f"task:{first}"), "state") == b"expired"
    assert client.hget(t.key(queue, f"task:{second}"), "state") == b"running"
    assert client.hget(t.key(queue, f"task:{third}"), "state") == b"queued"


def test_a_batch_with_a_message_holding_a_newline_comes_back_whole(transport, queue, client):
    # Given a plain task and another program's pretty-printed JSON, newlines and all
    t = transport
    t.submit_task(queue, {"n": 0})
    client.rpush(t.ready_key(queue), b'{\n  "n": 1\n}')
    # When a consumer takes both in one move
    with t.consumer(queue, prefetch=4) as consumer:
        consumer.tracking = False
        deliveries = [consumer.reserve(timeout=2.0) for _ in range(2)]
        # Then each comes whole, in order (the batch came as items, not joined by
        # newlines)
        assert [d.payload for d in deliveries if d is not None] == [{"n": 0}, {"n": 1}]
        for d in deliveries:
            assert d is not None
            consumer.ack(d)


def test_an_untracked_move_takes_an_urgent_task_first(transport, queue, client):
    # Given an untracked queue (no records: the acks carry no id to retire) and a
    # consumer at prefetch 4 that has taken and acked its first batch (its next moves go
    # through the MOVE script, which takes no urgent task)
    t = transport
    t.state().set_tracking(queue, False)
    t.submit_tasks(queue, [{"n": n} for n in range(4)])
    with t.consumer(queue, prefetch=4) as consumer:
        consumer.tracking = False
        first = [consumer.reserve(timeout=2.0) for _ in range(4)]
        for d in first:
            assert d is not None
            consumer.ack(d)
        # When plain tasks wait, then an urgent one is submitted behind them
        t.submit_tasks(queue, [{"n": n} for n in range(4, 8)])
        t.submit_task(queue, {"n": "p9"}, priority=9)
        got = consumer.reserve(timeout=2.0)
        # Then the urgent one comes first, and the acks went (nothing else held)
        assert got is not None and got.payload == {"n": "p9"}
        assert _numbers(_processing_of(consumer, client))[0] == "p9"
        consumer.ack(got)


def _processing_of(consumer: Any, client: redis.Redis) -> list[bytes]:
    return list(client.lrange(consumer.processing_key, 0, -1))


def _sent_by_next_move(consumer: Any, queue_holds: int) -> tuple[bytes, Any]:
    """What the consumer's next move sends (its bytes), and the delivery it hands out."""
    conn = consumer._connection()
    sent: list[bytes] = []
    real = conn.send_packed_command

    def spy(command: Any, check_health: bool = True) -> None:
        sent.extend(bytes(part) for part in command)
        real(command, check_health)

    conn.send_packed_command = spy
    try:
        delivery = consumer.reserve(timeout=2.0)
    finally:
        del conn.send_packed_command
    assert delivery is not None, f"{queue_holds} tasks wait"
    return b"".join(sent), delivery


def _drain_sends_a_count(
    transport: RedisTransport, queue: str, client: redis.Redis, tracked: bool
) -> None:
    # Given a consumer at prefetch 6 that took six tasks and acked them in order
    t = transport
    if not tracked:
        t.state().set_tracking(queue, False)
    t.submit_tasks(queue, [{"n": n} for n in range(12)])
    with t.consumer(queue, prefetch=6) as consumer:
        consumer.tracking = tracked
        first = [consumer.reserve(timeout=2.0) for _ in range(6)]
        for d in first:
            assert d is not None
            assert consumer.start(d) == "run"
            consumer.ack(d)
        # When it moves again, holding nothing but what it acked, in order
        sent, d = _sent_by_next_move(consumer, 6)
        # Then the move names the last ack only: the others go as their count
        raws = [d0.receipt.raw for d0 in first if d0 is not None]
        assert [raw in sent for raw in raws] == [False] * 5 + [True]
        # And the acked are gone: the consumer holds the new batch only
        held = list(client.lrange(consumer.processing_key, 0, -1))
        assert len(held) == 6 and not set(raws) & set(held)
        consumer.ack(d)


def test_an_untracked_move_acks_all_it_held_by_their_count(transport, queue, client):
    _drain_sends_a_count(transport, queue, client, tracked=False)


def test_a_tracked_move_acks_all_it_held_by_their_count(transport, queue, client):
    _drain_sends_a_count(transport, queue, client, tracked=True)


def _mismatch(transport: RedisTransport, queue: str, client: redis.Redis, tracked: bool) -> None:
    # Given a consumer at prefetch 2 that took and acked two tasks, in order
    t = transport
    if not tracked:
        t.state().set_tracking(queue, False)
    ids = t.submit_tasks(queue, [{"n": n} for n in range(4)])
    with t.consumer(queue, prefetch=2) as consumer:
        consumer.tracking = tracked
        got = [consumer.reserve(timeout=2.0) for _ in range(2)]
        for d in got:
            assert d is not None
            assert consumer.start(d) == "run"
            consumer.ack(d)
        # and whose processing list no longer is what it thinks, though of the same
        # length (another program's text in the second's place)
        client.lset(consumer.processing_key, 1, b"not-ours")
        # When it moves again
        d = consumer.reserve(timeout=2.0)
        assert d is not None and d.payload == {"n": 2}
        # Then the acks removed what they named, and nothing else: the other text stays
        held = list(client.lrange(consumer.processing_key, 0, -1))
        assert held[0] == b"not-ours" and len(held) == 3
        if tracked:
            for task_id in ids[:2]:
                assert t.status(task_id).state == "succeeded"
        client.lrem(consumer.processing_key, 1, b"not-ours")
        consumer.ack(d)


def test_an_untracked_count_ack_checks_the_list_is_what_the_consumer_held(transport, queue, client):
    _mismatch(transport, queue, client, tracked=False)


def test_a_tracked_count_ack_checks_the_list_is_what_the_consumer_held(transport, queue, client):
    _mismatch(transport, queue, client, tracked=True)


def test_acks_sent_after_a_move_trim_the_head_only_where_the_consumer_left_it(
    transport, queue, client
):
    """``START`` with no task of its own, its acks' messages sent as '=' and the last one
    named (``RedisConsumer._next_then_acks``): the head goes with one LTRIM when that
    last one is where the consumer left it; else (the list recovered by another consumer
    meanwhile) nothing is removed, and the statuses are written all the same."""
    t = transport
    ids = t.submit_tasks(queue, [{"n": n} for n in range(6)])
    got = _next(t, client, queue, 6)
    proc = t.key(queue, f"processing:{CONSUMER}")
    base = [t.prefix, t.script_queue(queue), CONSUMER, t.status_ttl_ms, "1", "", 0]

    def acks_after(last: bytes, n: int) -> None:
        triples = [p for i in range(n) for p in ("=", ids[i], "")]
        client.eval(scripts.START.text, 0, *base, last, n, *triples)

    # When the first three are acked that way, the third named: they go, the rest stay
    acks_after(got[2], 3)
    assert _processing(t, client, queue) == got[3:]
    assert [t.status(i).state for i in ids[:3]] == ["succeeded"] * 3
    # When a last one that is not where it was is named: nothing is removed
    client.lpush(proc, b"another text")
    acks_after(got[4], 2)
    assert _processing(t, client, queue) == [b"another text", *got[3:]]
