"""The hot path of an untracked consumer: the ``NEXT`` script moves and acks in batches.

Without statuses to check, ``NEXT`` takes a whole prefetch with a few commands (the
urgent tasks first, then the ready list's head) and removes the acks of a consumer that
settled in order with one ``LTRIM``; any other order falls back to one ``LREM`` an ack.
These call the script itself, as the consumer does between two maintenance calls.
"""

from __future__ import annotations

import json

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
    args = [t.prefix, t.script_queue(queue), CONSUMER, want, "0", t.status_ttl_ms, ""]
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
