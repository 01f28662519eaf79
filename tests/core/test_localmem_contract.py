"""The contract suite on the in-process reference transport (threads stand for processes)."""

from __future__ import annotations

import pytest

from asynctask.testing import TransportContract
from asynctask.testing.contract import SECRET
from asynctask.testing.status import StatusContract
from asynctask.transports.localmem import LocalMemTransport


class LocalMemProbe:
    def __init__(self, transport: LocalMemTransport) -> None:
        self.transport = transport

    def stored(self, queue: str) -> int:
        return self.transport.stored(queue)

    def inject(self, queue: str, text: str) -> None:
        self.transport.inject(queue, text)

    def drop_connections(self) -> None:
        """Memory has no connection to drop."""


class TestLocalMemTransport(TransportContract, StatusContract):
    @pytest.fixture
    def transport_uri(self) -> str:
        return "localmem:"

    @pytest.fixture
    def probe(self, transport) -> LocalMemProbe:
        return LocalMemProbe(transport)

    @pytest.fixture
    def secret_uri(self) -> str:
        # localmem takes no password: the URI is refused, without showing it
        return f"localmem:?password={SECRET}"

    @pytest.fixture
    def state_store_uri(self, tmp_path) -> str:
        # another kind of store than its own (the default is another localmem one)
        return f"filesys:{tmp_path / 'state'}"
