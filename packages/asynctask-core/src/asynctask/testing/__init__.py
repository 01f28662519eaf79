"""Test support for transports and workers (install ``asynctask-core[testing]``).

``TransportContract`` is the shared suite every transport passes unchanged;
``require_service`` skips a test whose server is down, or fails it in CI.
"""

from __future__ import annotations

from asynctask.testing.commands import FAST_CHECKS, clean_environment, workers_command
from asynctask.testing.contract import Probe, TransportContract
from asynctask.testing.services import REQUIRE_VARIABLE, require_service, unique_queue

__all__ = [
    "FAST_CHECKS",
    "REQUIRE_VARIABLE",
    "Probe",
    "TransportContract",
    "clean_environment",
    "require_service",
    "unique_queue",
    "workers_command",
]
