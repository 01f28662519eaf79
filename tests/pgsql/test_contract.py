"""The shared transport contract on PostgreSQL (database ``test`` at 127.0.0.1)."""

from __future__ import annotations

import uuid

import pytest

from asynctask.testing import TransportContract
from asynctask.testing.contract import SECRET
from asynctask.testing.status import StatusContract
from asynctask.testing.supervised import SupervisedStatusContract

from .conftest import DATABASE, HOST, PgsqlProbe

#: the schema of the contract's tables (created by the first test)
SCHEMA = "asynctask_contract"


class TestPgsqlTransport(TransportContract, StatusContract, SupervisedStatusContract):
    @pytest.fixture
    def application_name(self) -> str:
        """A name for this test's connections only, so that it can drop them all."""
        return f"asynctask_t_{uuid.uuid4().hex[:12]}"

    @pytest.fixture
    def transport_uri(self, pg_server: None, application_name: str) -> str:
        # A short recovery bound keeps the dead-consumer tests quick. A schema of the
        # suite's own: consumers of other programs on this server (whose sweeps may be
        # older than ours) never look at these rows when a test drops a connection.
        return (
            f"pgsql://{HOST}/{DATABASE}?recovery_seconds=1&retry_timeout=5"
            f"&application_name={application_name}&schema={SCHEMA}"
        )

    @pytest.fixture
    def probe(self, application_name: str) -> PgsqlProbe:
        return PgsqlProbe(schema=SCHEMA, application_name=application_name)

    @pytest.fixture
    def secret_uri(self) -> str:
        return f"pgsql://asynctask:{SECRET}@{HOST}/{DATABASE}"
