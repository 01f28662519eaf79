"""The shared transport contract on PostgreSQL (database ``test`` at 127.0.0.1)."""

from __future__ import annotations

import pytest

from asynctask.testing import TransportContract

from .conftest import DATABASE, HOST, PgsqlProbe


class TestPgsqlTransport(TransportContract):
    @pytest.fixture
    def transport_uri(self, pg_server: None) -> str:
        # A short recovery bound keeps the dead-consumer tests quick.
        return f"pgsql://{HOST}/{DATABASE}?recovery_seconds=1&retry_timeout=5"

    @pytest.fixture
    def probe(self) -> PgsqlProbe:
        return PgsqlProbe()
