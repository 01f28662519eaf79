"""Two views of one backend, for the contract suites that pit a worker against a rival
(liveness, global limits): each is a transport object of its own on the same URI, as two
processes or hosts would hold."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from asynctask.testing.contract import open_transport
from asynctask.transport import Transport


class TwoViews:
    """The fixtures ``transport`` and ``rival``; ``transport_uri`` comes from the subclass."""

    @pytest.fixture
    def transport(self, transport_uri: str) -> Iterator[Transport]:
        """A fresh transport object, closed after the test."""
        transport = open_transport(transport_uri)
        yield transport
        transport.close()

    @pytest.fixture
    def rival(self, transport_uri: str) -> Iterator[Transport]:
        """Another transport object on the same backend: another process's or host's view."""
        transport = open_transport(transport_uri)
        yield transport
        transport.close()
