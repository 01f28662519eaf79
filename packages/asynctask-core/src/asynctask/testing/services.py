"""Servers in tests: skipped locally when down, fatal when ``ASYNCTASK_REQUIRE_SERVICES=1``."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

import pytest

REQUIRE_VARIABLE = "ASYNCTASK_REQUIRE_SERVICES"


def require_service(name: str, check: Callable[[], object]) -> None:
    """Run ``check()``; if it raises, skip the test (or fail it when services are required)."""
    try:
        check()
    except Exception as exc:
        reason = f"{name} is not reachable: {type(exc).__name__}: {exc}"
        if os.environ.get(REQUIRE_VARIABLE) == "1":
            pytest.fail(f"{reason} ({REQUIRE_VARIABLE}=1 makes this a failure)", pytrace=False)
        pytest.skip(reason)


def unique_queue(prefix: str = "t") -> str:
    """A queue name no other test uses."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"
