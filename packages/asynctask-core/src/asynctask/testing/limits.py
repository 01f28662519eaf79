"""The global limits contract: ``Transport.limit_take`` and ``limit_free``.

For transports that keep a queue's global limits (``asynctask.limits``): filesys, redis,
pgsql, and localmem (whose one process has no owner liveness: its dead-owner test is a
strict xfail). A transport's tests subclass ``GlobalLimitContract`` and supply
the fixture ``transport_uri``. What it proves: a rate counts every start of every
process in one window and says how long to wait; a retried take counts nothing more; a
cap holds its slots until they are freed, or until their owner is no longer alive (a
child that died with a slot does not leak it).
"""

from __future__ import annotations

import time

import pytest

from asynctask.limits import LimitSpec
from asynctask.liveness import new_owner
from asynctask.testing.services import unique_queue
from asynctask.testing.views import TwoViews
from asynctask.transport import Transport


class GlobalLimitContract(TwoViews):
    """The shared global-limits suite; the fixture ``transport_uri`` comes from the subclass."""

    @pytest.fixture
    def queue(self) -> str:
        """A queue name no other test uses."""
        return unique_queue("lim")

    def test_a_global_rate_counts_every_process_in_one_window(
        self, transport: Transport, rival: Transport, queue: str
    ) -> None:
        """Fails against a rate counted per transport object (checked against a redis
        whose script kept no window: the fourth start was allowed)."""
        # Given a rate of 3 starts per 2 s, shared by two hosts
        limit = LimitSpec(rate_max_calls=3, rate_period=2.0)
        # When three starts are taken from both, and a fourth asked for
        assert transport.limit_take(queue, limit, "a:1") == 0.0
        assert rival.limit_take(queue, limit, "b:1") == 0.0
        assert transport.limit_take(queue, limit, "c:1") == 0.0
        pause = rival.limit_take(queue, limit, "d:1")
        asked = time.monotonic()
        # Then the fourth waits until the first start leaves the window
        assert 0.0 < pause <= 2.0, pause
        # And a take retried after a lost reply counts nothing more
        assert transport.limit_take(queue, limit, "c:1") == 0.0
        assert rival.limit_take(queue, limit, "d:1") > 0.0
        # And once the window has moved on, it starts
        time.sleep(max(0.0, asked + pause + 0.05 - time.monotonic()))
        assert rival.limit_take(queue, limit, "d:1") == 0.0

    def test_a_cap_holds_its_slots_until_they_are_freed(
        self, transport: Transport, rival: Transport, queue: str
    ) -> None:
        """Fails against a cap whose slots are counted per process, or never freed."""
        limit = LimitSpec(max_running=2)
        # Given two tasks running on two hosts under a cap of 2
        assert transport.limit_take(queue, limit, "a:1") == 0.0
        assert rival.limit_take(queue, limit, "b:1") == 0.0
        # When a third asks, it waits (and asking again changes nothing)
        assert transport.limit_take(queue, limit, "c:1") > 0.0
        assert rival.limit_take(queue, limit, "c:1") > 0.0
        # Then once one ends, the third starts, and a fourth waits again
        rival.limit_free(queue, "b:1")
        assert transport.limit_take(queue, limit, "c:1") == 0.0
        assert rival.limit_take(queue, limit, "d:1") > 0.0
        # A rate and a cap together: a start the cap refuses costs no token
        both = LimitSpec(rate_max_calls=10, rate_period=60.0, max_running=2)
        other = unique_queue("lim")
        assert transport.limit_take(other, both, "a:1") == 0.0
        assert transport.limit_take(other, both, "b:1") == 0.0
        for _ in range(20):
            assert rival.limit_take(other, both, "c:1") > 0.0
        transport.limit_free(other, "a:1")
        assert rival.limit_take(other, both, "c:1") == 0.0

    def test_a_dead_owners_slot_comes_back(
        self, transport: Transport, rival: Transport, queue: str
    ) -> None:
        """Fails against slots that ignore their owner's liveness (checked against a
        redis script that counted every slot as held: the cap leaked for good)."""
        limit = LimitSpec(max_running=1)
        # Given a slot held by a child whose supervisor keeps its owner alive
        owner = new_owner()
        liveness = transport.liveness(queue, owner)
        liveness.beat()
        assert transport.limit_take(queue, limit, "a:1", owner) == 0.0
        assert rival.limit_take(queue, limit, "b:1", new_owner()) > 0.0
        # When the child dies (SIGKILL: it never frees the slot) and its keeper ends it
        liveness.end(None)
        # Then the slot is free for another host's child at once
        assert rival.limit_take(queue, limit, "b:1", new_owner()) == 0.0
