"""The global limits contract (``asynctask.limits``) on the in-process transport."""

from __future__ import annotations

import pytest

from asynctask.testing.limits import GlobalLimitContract


class TestLocalMemLimits(GlobalLimitContract):
    @pytest.fixture
    def transport_uri(self) -> str:
        return "localmem:"

    @pytest.fixture
    def rival(self, transport):
        # localmem lives in one object: "another host" is the same store
        return transport

    @pytest.mark.xfail(
        reason="one process: no owner liveness (a slot lives its lease)", strict=True
    )
    def test_a_dead_owners_slot_comes_back(self, transport, rival, queue):
        super().test_a_dead_owners_slot_comes_back(transport, rival, queue)
