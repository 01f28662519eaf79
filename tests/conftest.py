"""Shared fixtures: a clean settings state per test, and the transports worker tests run on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from asynctask.api import close_transports
from asynctask.settings import configure

pytest_plugins = ["process_fixtures"]


@pytest.fixture(autouse=True)
def _clean_process_state() -> Iterator[None]:
    # Each test starts from loaded-on-demand settings and closes what it opened.
    configure(None)
    yield
    configure(None)
    close_transports()
