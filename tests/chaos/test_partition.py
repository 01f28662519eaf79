"""Three hosts, one backend, one host cut off: the short partition scenario of ``make chaos``.

Each host is a set of Linux namespaces (network, hostname, PID space) running ``asynctask
workers`` with 2 children; the server is the scenario's own, in a server namespace the
hosts reach over veth links (``chaos.hosts``, ``chaos.hosted``). While 200 tasks are fed,
``host1``'s link goes down for twice the recovery bound, then up again.

Making namespaces needs root: elsewhere the test is skipped, saying so, unless
``ASYNCTASK_REQUIRE_NAMESPACES=1`` (``.ci/run``), where it fails instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chaos import hosts

ROOT = Path(__file__).resolve().parents[2]
#: the server program each transport's private server needs
PROGRAMS = {"redis": "redis-server", "pgsql": "/usr/lib/postgresql", "amqp": "/usr/lib/rabbitmq"}


def skip_without_namespaces(name: str) -> None:
    """Skip (saying why) where hosts or ``name``'s private server cannot be made; fail
    instead under ``ASYNCTASK_REQUIRE_NAMESPACES=1``."""
    reason = hosts.unavailable()
    if reason is None and not (shutil.which(PROGRAMS[name]) or Path(PROGRAMS[name]).exists()):
        reason = f"{PROGRAMS[name]} is not installed: no private {name} server"
    if reason is not None:
        if os.environ.get("ASYNCTASK_REQUIRE_NAMESPACES") == "1":
            pytest.fail(f"ASYNCTASK_REQUIRE_NAMESPACES=1 but {reason}")
        pytest.skip(reason)


def run_chaos(tmp_path: Path, args: list[str], timeout: float) -> tuple[dict[str, Any], str]:
    """Run ``python -m chaos`` with ``args`` for one scenario; its one result, and a summary
    (the result and the run's output) for the assertions' messages."""
    out = tmp_path / "chaos.json"
    done = subprocess.run(
        [sys.executable, "-m", "chaos", *args, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.exists(), done.stdout + done.stderr[-3000:]
    [result] = json.loads(out.read_text())["results"]
    return result, f"{result}\n{done.stdout}\n{done.stderr[-3000:]}"


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["redis", "pgsql", "amqp"])
def test_a_host_cut_off_loses_nothing_and_repeats_only_what_it_held(name, tmp_path):
    skip_without_namespaces(name)
    # Given 3 hosts draining 200 tasks from a server of the test's own
    # When host1 is cut off mid-run for twice the recovery bound, then healed
    result, summary = run_chaos(
        tmp_path,
        ["--only", name, "--scenarios", "partition", "--partition-tasks", "200", "--seconds", "6"],
        timeout=280,
    )
    assert result["skipped"] is None, summary
    # Then no task is lost; only what the cut host held ran twice; its tasks started
    # elsewhere within the bound; what it finished while cut off ran again elsewhere
    # (its acknowledgement could not arrive) and its late acknowledgements removed nothing
    assert result["errors"] == [], summary
    assert result["lost"] == 0, summary
    assert result["duplicates"] <= result["bound"], summary
    assert result["ok"], summary
    # And the hosts' children shared PIDs (each host has a PID space of its own)
    assert "0 PIDs in use on more than one host" not in result["notes"][0], summary
