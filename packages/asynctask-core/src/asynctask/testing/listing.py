"""The listing contract: what a person reads of a queue, a page at a time (``peek``,
``failed_tasks`` and ``in_flight`` with ``limit`` and ``offset``), as one mixin.

``TransportContract`` includes it, so every transport runs it with the same fixtures
(``transport``, ``queue``, ``probe``). A dashboard shows pages of 100 with next and
previous links; these tests hold a transport to what that needs: a page past the first
holds the right tasks in the right order, nothing repeated and nothing skipped, and
listing takes, moves or changes nothing.

Shown to fail against broken transports (each tried once by hand on ``localmem``): an
``_in_flight`` that ignored ``offset``, one that listed ready tasks too, and a ``_failed``
that sliced ``[offset:limit]`` instead of ``[offset:offset + limit]``.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from asynctask.errors import NotSupportedError
from asynctask.transport import Transport

#: tasks in the paging tests: two full pages of 100 and a half one
PAGED = 250


def _fail_all(transport: Transport, queue: str, count: int) -> None:
    """Reserve and fail ``count`` tasks, in queue order (oldest failure first)."""
    with transport.consumer(queue, prefetch=10) as consumer:
        for _ in range(count):
            delivery = consumer.reserve(timeout=10)
            assert delivery is not None, "a submitted task did not come"
            consumer.fail(delivery, f"RuntimeError: {delivery.payload['n']}")


def _held_once_started(transport: Transport, queue: str, started: str) -> dict[str, Any]:
    """The held tasks by id, read again for up to 5 s until ``started`` shows a time."""
    deadline = time.monotonic() + 5
    while True:
        held = {task.id: task for task in transport.in_flight(queue)}
        found = held.get(started)
        if (found is not None and found.since is not None) or time.monotonic() > deadline:
            return held
        time.sleep(0.05)


class ListingContract:
    """The paging and in-flight tests of the transport contract; see the module docstring."""

    def test_peek_pages_through_250_tasks_in_order(self, transport: Any, queue: str) -> None:
        """Pages of 100 by ``offset``: the third holds the last 50, each task once, head
        first. Fails against a peek that ignores ``offset`` (page 3 would repeat page 1)
        or lists a page from the tail."""
        if not transport.can_peek:
            with pytest.raises(NotSupportedError, match="peek"):
                transport.peek(queue, limit=100, offset=100)
            return
        # Given 250 ready tasks
        ids = transport.submit_tasks(queue, [{"n": n} for n in range(PAGED)])
        # When they are read a page of 100 at a time
        pages = [transport.peek(queue, limit=100, offset=offset) for offset in (0, 100, 200)]
        # Then the pages hold 100, 100 and 50, in order, nothing repeated
        assert [len(page) for page in pages] == [100, 100, 50]
        assert [w.payload for page in pages for w in page] == [{"n": n} for n in range(PAGED)]
        assert [w.id for page in pages for w in page] == ids
        # And a page past the end is empty, one across it short, and nothing was taken
        assert transport.peek(queue, limit=100, offset=PAGED) == []
        assert [w.id for w in transport.peek(queue, limit=10, offset=245)] == ids[245:]
        assert transport.poll_queue(queue) == PAGED
        with pytest.raises(ValueError, match="offset"):
            transport.peek(queue, offset=-1)
        assert transport.purge(queue) == PAGED

    def test_failed_tasks_page_through_250_in_order(self, transport: Any, queue: str) -> None:
        """The failed store by pages of 100, oldest first: the third page holds the last
        50, each task once. Fails against a store that ignores ``offset`` or slices a
        page as ``[offset:limit]``."""
        # Given 250 failed tasks, failed in submit order
        transport.submit_tasks(queue, [{"n": n} for n in range(PAGED)])
        _fail_all(transport, queue, PAGED)
        # When the failed store is read a page of 100 at a time
        pages = [
            transport.failed_tasks(queue, limit=100, offset=offset) for offset in (0, 100, 200)
        ]
        # Then the pages hold 100, 100 and 50, oldest first, nothing repeated
        assert [len(page) for page in pages] == [100, 100, 50]
        assert [f.payload for page in pages for f in page] == [{"n": n} for n in range(PAGED)]
        assert len({f.id for page in pages for f in page}) == PAGED
        assert pages[2][-1].error == f"RuntimeError: {PAGED - 1}"
        # And a page past the end is empty, and reading changed nothing
        assert transport.failed_tasks(queue, limit=100, offset=PAGED) == []
        assert transport.failed_tasks(queue, limit=0, offset=10) == []
        assert transport.queue_stats(queue).failed in (PAGED, None)
        with pytest.raises(ValueError, match="offset"):
            transport.failed_tasks(queue, offset=-1)
        with pytest.raises(ValueError, match="limit"):
            transport.failed_tasks(queue, limit=-1)
        assert transport.purge_failed(queue) == PAGED

    def test_in_flight_lists_held_tasks_with_holder_and_time(
        self, transport: Any, queue: str
    ) -> None:
        """``in_flight`` lists what consumers hold (a started task and a prefetched one),
        with payload, attempt, holder and since when; not the ready, delayed or failed
        ones; and a settled task leaves the list. A transport that cannot read what its
        consumers hold says so. Fails against a listing that includes ready tasks, keeps
        a settled one, ignores ``offset``, or gives no holder."""
        if not transport.can_list_in_flight:
            with pytest.raises(NotSupportedError, match="in_flight"):
                transport.in_flight(queue)
            return
        # Given 4 tasks, a delayed one and a failed one
        assert transport.in_flight(queue) == []
        submitted = time.time()
        ids = transport.submit_tasks(queue, [{"n": n} for n in range(4)])
        transport.submit_task(queue, {"late": True}, delay=60)
        with transport.consumer(queue) as failing:
            first = failing.reserve(timeout=10)
            assert first is not None and first.id == ids[0]
            failing.fail(first, "boom")
        # When one consumer holds two tasks (one started) and another holds a third
        with transport.consumer(queue, prefetch=2) as consumer, transport.consumer(queue) as other:
            before = time.time()
            one = consumer.reserve(timeout=10)
            assert one is not None and one.id == ids[1]
            assert consumer.start(one) == "run"
            two = consumer.reserve(timeout=10)
            three = other.reserve(timeout=10)
            assert two is not None and three is not None
            assert {two.id, three.id} == {ids[2], ids[3]}
            after = time.time()
            # Then exactly those three are listed, with their fields (the started one's
            # time may be written a moment after ``start``: pgsql pipelines it)
            held = _held_once_started(transport, queue, one.id)
            assert set(held) == {one.id, two.id, three.id}, held
            listed = held[one.id]
            assert listed.queue == queue and listed.payload == {"n": 1} and listed.raw is None
            assert listed.attempt == 1 and isinstance(listed.holder, str) and listed.holder
            assert listed.since is not None and before - 1 <= listed.since <= time.time() + 1
            assert listed.submitted_at is None or submitted - 1 <= listed.submitted_at <= after
            # one holder for the two tasks of one consumer, another for the other's
            assert held[two.id].holder == listed.holder
            assert held[three.id].holder != listed.holder
            for task in held.values():
                assert task.since is None or before - 1 <= task.since <= after + 1
            # And they page: 2 then 1, the same three, none twice
            page1, page2 = transport.in_flight(queue, limit=2), transport.in_flight(queue, 2, 2)
            assert len(page1) == 2 and len(page2) == 1
            assert {t.id for t in page1 + page2} == set(held)
            assert transport.in_flight(queue, limit=0) == []
            # And reading changed nothing: still held, none of them ready
            assert transport.poll_queue(queue) == 0
            # When the other consumer closes (its task handed back), that task leaves
            other.close()
            assert {t.id for t in transport.in_flight(queue)} == {one.id, two.id}
            # And once both are acknowledged (sent at the latest when the consumer closes)
            consumer.ack(one)
            consumer.ack(two)
        assert transport.in_flight(queue) == []
        with pytest.raises(ValueError, match="limit"):
            transport.in_flight(queue, limit=-1)
        transport.purge(queue)
        transport.purge_failed(queue)
