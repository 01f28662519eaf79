"""The global limits contract (``asynctask.limits``) on PostgreSQL."""

from __future__ import annotations

import pytest

from asynctask.testing.limits import GlobalLimitContract

from .conftest import DATABASE, HOST


class TestPgsqlLimits(GlobalLimitContract):
    @pytest.fixture
    def transport_uri(self, pg_server: None) -> str:
        return (
            f"pgsql://{HOST}/{DATABASE}?recovery_seconds=2&retry_timeout=5&schema=asynctask_limits"
        )
