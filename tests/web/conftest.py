"""Fixtures of the dashboard's tests: a transport per backend, and a client of the app."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from asynctask.testing import require_service, unique_queue
from asynctask.testing.contract import open_transport
from asynctask.transport import Transport
from backends import BACKENDS


@pytest.fixture(params=["localmem", *sorted(BACKENDS)])
def web_transport(request, tmp_path) -> Iterator[Transport]:
    """A transport object of each kind (localmem too: the app shares the test's object)."""
    if request.param == "localmem":
        uri = "localmem:"
    else:
        make, check = BACKENDS[request.param]
        if check is not None:
            require_service(request.param, check)
        uri = make(tmp_path)
    transport = open_transport(uri)
    yield transport
    transport.close()


@pytest.fixture
def queue() -> str:
    return unique_queue("web")
