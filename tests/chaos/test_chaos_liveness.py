"""The liveness chaos scenarios, short, on every transport (``make chaos`` runs them too).

A GIL hog beside waiting rivals, a SIGTERM to the process group, and child-killing tasks
beside innocent ones: each through ``asynctask workers`` via ``python -m chaos`` on the
test's server as it is (no restart, no connection kill: those need a server of the
suite's own, in ``make chaos``).

``make test`` runs the process-group SIGTERM here (on AMQP it reaches the relay too); the
GIL hog and the child-killing tasks have their tests on every transport in
``tests/workers/test_liveness.py`` (and ``tests/amqp/test_relay.py``), so their rounds
here are ``long`` (``make test-long``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize(
    "scenarios", [("group",), pytest.param(("gil", "deadly"), marks=pytest.mark.long)], ids="+".join
)
def test_liveness_scenarios_run_nothing_twice_and_lose_nothing(
    backend_uri: str, scenarios: tuple[str, ...], tmp_path: Path
) -> None:
    # Given a transport on its short recovery bound
    name = backend_uri.split(":", 1)[0]
    if name == "pgsql":
        # A schema of its own, as make chaos uses: a sweep of an asynctask-pgsql without
        # owner rows (another checkout sharing the default schema) would take the
        # supervisor-kept rows for dead ones (see the pgsql README, rolling upgrades).
        backend_uri += (
            "&schema=asynctask_liveness" if "?" in backend_uri else "?schema=asynctask_liveness"
        )
    out = tmp_path / "chaos.json"
    # When the liveness scenarios run through `asynctask workers`
    done = subprocess.run(
        [
            sys.executable, "-m", "chaos", "--only", name,
            "--scenarios", ",".join(scenarios),
            "--uri", f"{name}={backend_uri}", "--json", str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=380,
    )  # fmt: skip
    # Then no task was lost, none ran twice, none was cut short, the deadly ones failed
    assert out.exists(), done.stdout + done.stderr
    results = json.loads(out.read_text())["results"]
    assert [r["scenario"] for r in results] == list(scenarios)
    for result in results:
        summary = f"{result}\n{done.stdout}\n{done.stderr[-3000:]}"
        assert result["skipped"] is None, summary
        assert result["errors"] == [], summary
        assert result["lost"] == 0, summary
        assert result["duplicates"] == 0, summary
        assert result["ok"], summary
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
