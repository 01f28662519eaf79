"""Fixtures of the in-process run-loop tests."""

from __future__ import annotations

import pytest

from asynctask import Transport, get_transport


@pytest.fixture
def transport() -> Transport:
    """A fresh in-process transport."""
    return get_transport("localmem:")
