"""One consumer holding several reservations, settled in any order while it reserves more:
what an async or threaded child does, on every transport (localmem included)."""

from __future__ import annotations

from asynctask import get_transport
from asynctask.testing import unique_queue
from support import wait_for


def test_reservations_settle_in_any_order_while_more_are_reserved(backend_uri):
    _settle_out_of_order(backend_uri)


def test_localmem_reservations_settle_in_any_order():
    _settle_out_of_order("localmem:")


def _settle_out_of_order(uri: str) -> None:
    # Given 8 tasks and one consumer holding 6 of them at once
    transport = get_transport(uri)
    queue = unique_queue("ooo")
    ids = transport.submit_tasks(queue, [{"n": n} for n in range(8)])
    with transport.consumer(queue, prefetch=6) as consumer:
        held = [consumer.reserve(timeout=5) for _ in range(6)]
        assert [d.payload["n"] for d in held if d is not None] == list(range(6))
        d0, d1, d2, d3, d4, d5 = held
        # When they are settled out of order, reserving between settles
        consumer.ack(d3)
        consumer.fail(d1, "failed on purpose")
        more = consumer.reserve(timeout=5)
        consumer.retry(d4, 0.0, "again")
        consumer.ack(d0)
        consumer.release(d5)
        consumer.ack(d2)
        assert more is not None and more.payload["n"] == 6
        consumer.ack(more)
    # Then each ended as settled: 3 acked, 1 failed, 2 (retried, released) and the last back
    assert [f.id for f in transport.failed_tasks(queue)] == [ids[1]]

    remaining: list[tuple[int, int]] = []

    def take_the_rest() -> bool:
        with transport.consumer(queue, prefetch=1) as again:
            while (d := again.reserve(timeout=0.5)) is not None:
                remaining.append((d.payload["n"], d.attempt))
                again.ack(d)
        return len(remaining) >= 3

    wait_for(take_the_rest, 30, "the retried, released and untouched tasks")
    assert sorted(remaining) == [(4, 2), (5, 1), (7, 1)]
    stats = transport.queue_stats(queue)
    assert (stats.ready, stats.in_flight or 0) == (0, 0)
