"""The shared transport contract on PostgreSQL (database ``test`` at 127.0.0.1)."""

from __future__ import annotations

import uuid

import pytest

from asynctask.testing import TransportContract
from asynctask.testing.contract import SECRET

from .conftest import DATABASE, HOST, PgsqlProbe


class TestPgsqlTransport(TransportContract):
    @pytest.fixture
    def application_name(self) -> str:
        """A name for this test's connections only, so that it can drop them all."""
        return f"asynctask_t_{uuid.uuid4().hex[:12]}"

    @pytest.fixture
    def transport_uri(self, pg_server: None, application_name: str) -> str:
        # A short recovery bound keeps the dead-consumer tests quick.
        return (
            f"pgsql://{HOST}/{DATABASE}?recovery_seconds=1&retry_timeout=5"
            f"&application_name={application_name}"
        )

    @pytest.fixture
    def probe(self, application_name: str) -> PgsqlProbe:
        return PgsqlProbe(application_name=application_name)

    @pytest.fixture
    def secret_uri(self) -> str:
        return f"pgsql://asynctask:{SECRET}@{HOST}/{DATABASE}"
