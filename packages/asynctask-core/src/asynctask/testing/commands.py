"""Running ``asynctask workers`` from tests, benchmarks and the chaos suite."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any

#: settings that make a test's workers poll and check children every 200 ms
FAST_CHECKS = {
    "asynctask_workers_poll_interval": 200,
    "asynctask_workers_check_child_interval": 200,
}


def workers_command(
    transport_uri: str,
    workers: Mapping[str, Any],
    *args: str,
    settings: Mapping[str, Any] | None = None,
) -> list[str]:
    """The command line of ``asynctask workers`` on a transport with these queues.

    ``settings`` are further ``--set`` values (JSON-encoded); ``args`` go last.
    """
    command = [
        sys.executable, "-m", "asynctask", "workers",
        "--set", f"asynctask_transport={transport_uri}",
        "--set", "asynctask_workers=" + json.dumps(dict(workers)),
    ]  # fmt: skip
    for name, value in (settings or {}).items():
        command += ["--set", f"{name}={json.dumps(value)}"]
    return [*command, *args]


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without ``ASYNCTASK_*`` settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTASK_")}
    env.update(extra)
    return env
