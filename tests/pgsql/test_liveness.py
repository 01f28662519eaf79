"""The liveness contract (``asynctask.liveness``) on PostgreSQL."""

from __future__ import annotations

import pytest

from asynctask.testing.liveness import LivenessContract

from .conftest import DATABASE, HOST

#: A schema of its own: a sweep of an older asynctask-pgsql sharing the default schema
#: would take rows of owners it does not know for dead ones.
SCHEMA = "asynctask_liveness"


class TestPgsqlLiveness(LivenessContract):
    @pytest.fixture
    def transport_uri(self, pg_server: None) -> str:
        return f"pgsql://{HOST}/{DATABASE}?recovery_seconds=2&retry_timeout=5&schema={SCHEMA}"
