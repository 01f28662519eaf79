"""Test support for transports and workers (install ``asynctask-core[testing]``).

``TransportContract`` is the shared suite every transport passes unchanged;
``StatusContract`` the task-status suite (DESIGN.md section 6) each adds once it keeps status,
``SupervisedStatusContract`` its stories under ``asynctask workers``;
``require_service`` skips a test whose server is down, or fails it in CI.
"""

from __future__ import annotations

from asynctask.testing.commands import FAST_CHECKS, clean_environment, workers_command
from asynctask.testing.contract import Probe, TransportContract
from asynctask.testing.services import REQUIRE_VARIABLE, require_service, unique_queue
from asynctask.testing.status import StatusContract
from asynctask.testing.supervised import SupervisedStatusContract

__all__ = [
    "FAST_CHECKS",
    "REQUIRE_VARIABLE",
    "Probe",
    "StatusContract",
    "SupervisedStatusContract",
    "TransportContract",
    "clean_environment",
    "require_service",
    "unique_queue",
    "workers_command",
]
