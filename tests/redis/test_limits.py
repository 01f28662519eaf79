"""The global limits contract (``asynctask.limits``) on Redis."""

from __future__ import annotations

import pytest

from asynctask.testing.limits import GlobalLimitContract


class TestRedisLimits(GlobalLimitContract):
    @pytest.fixture
    def transport_uri(self, redis_uri: str) -> str:
        return redis_uri
