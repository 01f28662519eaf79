"""The liveness contract (``asynctask.liveness``) on Redis."""

from __future__ import annotations

import pytest

from asynctask.testing.liveness import LivenessContract


class TestRedisLiveness(LivenessContract):
    @pytest.fixture
    def transport_uri(self, redis_uri: str) -> str:
        return redis_uri
