"""The liveness contract: consumers whose liveness another process keeps.

For transports that implement ``Transport.liveness`` (``asynctask.liveness``): filesys,
redis and pgsql. A transport's tests subclass ``LivenessContract`` and supply the fixture
``transport_uri``, as for ``TransportContract``::

    class TestRedisLiveness(LivenessContract):
        @pytest.fixture
        def transport_uri(self, redis_uri: str) -> str:
            return redis_uri

What it proves: an owned consumer's task stays its own for as long as its keeper beats,
however long past the recovery bound, though the consumer itself never beats; once the
keeper stops, a rival gets the task within the bound, counted; ``end()`` hands the tasks
back at once, in order, counting only the started ones.
"""

from __future__ import annotations

import time

import pytest

from asynctask.liveness import Liveness, new_owner
from asynctask.testing.services import unique_queue
from asynctask.testing.views import TwoViews
from asynctask.transport import Consumer, Delivery, Transport


def _beat_for(liveness: Liveness, seconds: float, rival: Consumer) -> Delivery | None:
    """Beat every ``interval`` for ``seconds`` while ``rival`` waits; what it got."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        liveness.beat()
        got = rival.reserve(timeout=liveness.interval)
        if got is not None:
            return got
    return None


class LivenessContract(TwoViews):
    """The shared liveness suite; the fixture ``transport_uri`` comes from the subclass."""

    @pytest.fixture
    def queue(self) -> str:
        """A queue name no other test uses."""
        return unique_queue("live")

    def test_an_owned_task_stays_its_own_while_the_keeper_beats(
        self, transport: Transport, rival: Transport, queue: str
    ) -> None:
        """Fails if the transport lets an owned consumer's task go while its keeper beats
        (checked against a redis whose scripts ignored the owner key: the rival took it
        after the bound), or if it keeps the task once the keeper has stopped."""
        # Given a task reserved by a consumer whose liveness a keeper holds (the consumer
        # itself never beats: no thread of this process refreshes anything for it)
        bound = transport.features.recovery_seconds
        transport.submit_task(queue, {"n": 1})
        owner = new_owner()
        liveness = transport.liveness(queue, owner)
        liveness.beat()
        owned = transport.consumer(queue, owner=owner)
        delivery = owned.reserve(timeout=5)
        assert delivery is not None and delivery.attempt == 1
        # When the keeper beats for twice the recovery bound while a rival waits
        with rival.consumer(queue) as other:
            taken = _beat_for(liveness, 2 * bound, other)
            # Then the rival never gets the task
            assert taken is None, f"a rival took {taken} while its owner's keeper beat"
            # When the keeper stops (the supervisor died with its host)
            started = time.monotonic()
            again = other.reserve(timeout=bound + 3)
            waited = time.monotonic() - started
            # Then the rival gets it within the bound, one attempt counted
            assert again is not None, f"not delivered again within {bound + 3:g} s"
            assert again.id == delivery.id and again.attempt == 2
            assert waited <= bound + 1.0, f"came back after {waited:.1f} s, bound {bound:g} s"
            other.ack(again)
        owned.close()  # its task was taken back: closing hands back nothing
        assert transport.queue_stats(queue).in_flight == 0

    def test_end_hands_back_at_once_counting_only_the_started_task(
        self, transport: Transport, rival: Transport, queue: str
    ) -> None:
        """Fails if ``end()`` waits for the recovery bound, charges an unstarted task an
        attempt, or changes the queue order (checked against a redis END that bumped
        every message: the prefetched ones came back at attempt 2)."""
        # Given three tasks, two of them reserved by an owned consumer, the first started
        ids = transport.submit_tasks(queue, [{"n": n} for n in range(3)])
        owner = new_owner()
        liveness = transport.liveness(queue, owner)
        liveness.beat()
        owned = transport.consumer(queue, prefetch=2, owner=owner)
        first = owned.reserve(timeout=5)
        second = owned.reserve(timeout=5)
        assert first is not None and second is not None
        assert [first.id, second.id] == ids[:2]
        # When its worker dies and the keeper ends its liveness (the consumer is not closed)
        handed = liveness.end({first.id})
        # Then every task is back at once, in order, only the started one counted
        assert handed >= 2
        with rival.consumer(queue) as other:
            got = [other.reserve(timeout=1) for _ in range(3)]
            assert all(d is not None for d in got), got
            assert [(d.id, d.attempt) for d in got if d is not None] == [
                (ids[0], 2),
                (ids[1], 1),
                (ids[2], 1),
            ]
            for d in got:
                assert d is not None
                other.ack(d)
        # And ending again hands back nothing
        assert liveness.end(None) == 0
        owned.close()

    def test_end_drops_a_finished_task_whose_ack_was_not_sent(
        self, transport: Transport, rival: Transport, queue: str
    ) -> None:
        """Fails if ``end()`` hands back a task its worker had acknowledged when the
        acknowledgement still waited for the consumer's next call (checked against a
        pgsql END_OWNER that ignored ``finished``: the task ran again)."""
        # Given two tasks reserved together (prefetch 2) by an owned consumer, the first
        # acknowledged (redis and pgsql send an ack with the consumer's next call), the
        # second started
        ids = transport.submit_tasks(queue, [{"n": 0}, {"n": 1}])
        owner = new_owner()
        liveness = transport.liveness(queue, owner)
        liveness.beat()
        owned = transport.consumer(queue, prefetch=2, owner=owner)
        first = owned.reserve(timeout=5)
        assert first is not None
        owned.ack(first)
        second = owned.reserve(timeout=5)
        assert second is not None and [first.id, second.id] == ids
        # When the worker dies then, and its keeper ends its liveness
        liveness.end({second.id}, {first.id})
        # Then only the started task comes back (counted); the finished one is gone
        with rival.consumer(queue) as other:
            again = other.reserve(timeout=1)
            assert again is not None and (again.id, again.attempt) == (second.id, 2)
            other.ack(again)
            assert other.reserve(timeout=0.5) is None
        owned.close()

    def test_a_cut_off_owners_late_settles_leave_the_new_delivery(
        self, transport: Transport, rival: Transport, queue: str
    ) -> None:
        """A host cut off past the bound comes back: its keeper beats again and its
        consumer settles what it held; the rival's delivery of those tasks stays the
        rival's. Fails against an acknowledgement that deletes by id alone (checked
        against a pgsql whose ack ignored the row's owner: the rival's row was deleted)."""
        # Given two tasks reserved by an owned consumer, its keeper beating
        bound = transport.features.recovery_seconds
        transport.submit_tasks(queue, [{"n": 0}, {"n": 1}])
        owner = new_owner()
        liveness = transport.liveness(queue, owner)
        liveness.beat()
        owned = transport.consumer(queue, prefetch=2, owner=owner)
        first = owned.reserve(timeout=5)
        second = owned.reserve(timeout=5)
        assert first is not None and second is not None
        # When its host is cut off (no beat) past the bound, and a rival takes both
        with rival.consumer(queue, prefetch=2) as other:
            again = [other.reserve(timeout=bound + 5), other.reserve(timeout=5)]
            assert [(d.id, d.attempt) for d in again if d is not None] == [
                (first.id, 2),
                (second.id, 2),
            ]
            # And the host comes back: its keeper beats, its consumer acknowledges the
            # first task and fails the second (both sent with its next calls)
            liveness.beat()
            owned.ack(first)
            owned.fail(second, "RuntimeError: finished while cut off")
            owned.close()
            # Then both are still the rival's: in flight, none failed
            stats = transport.queue_stats(queue)
            assert (stats.in_flight, stats.failed, stats.ready) == (2, 0, 0), stats
            for delivery in again:
                assert delivery is not None
                other.ack(delivery)
        stats = transport.queue_stats(queue)
        assert (stats.in_flight, stats.failed, stats.ready) == (0, 0, 0), stats

    def test_owner_ids_are_checked(self, transport: Transport, queue: str) -> None:
        """An owner id that could break a key or a file name is refused up front."""
        for bad in ["", "a/b", "a+b", "x" * 101, "../etc", " a"]:
            with pytest.raises(ValueError, match="owner id"):
                transport.liveness(queue, bad)
            with pytest.raises(ValueError, match="owner id"):
                transport.consumer(queue, owner=bad)
