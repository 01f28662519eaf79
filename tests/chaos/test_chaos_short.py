"""The short chaos scenario in CI: 5 child kills during 200 tasks, on every transport.

``make chaos`` runs the long suite (minutes); this keeps its promise checked on every
``make test``: a killed worker loses no task, and repeats at most the one it held.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KILLS = 5


@pytest.mark.slow
def test_five_worker_kills_lose_no_task(backend_uri, tmp_path):
    # Given a transport and the chaos suite's short plan: 200 tasks fed over 3 s
    name = backend_uri.split(":", 1)[0]
    out = tmp_path / "chaos.json"

    # When it runs them through `asynctask workers` with 4 children, SIGKILLing a random
    # child every 0.5 s, 5 times
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "chaos",
            "--only",
            name,
            "--scenarios",
            "kills",
            "--tasks",
            "200",
            "--kills",
            str(KILLS),
            "--seconds",
            "3",
            "--uri",
            f"{name}={backend_uri}",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )

    # Then every task was completed, each kill hit a child, and no task ran twice
    # but those a killed child had completed without its acknowledgement reaching the backend
    assert out.exists(), done.stdout + done.stderr
    [result] = json.loads(out.read_text())["results"]
    summary = f"{result}\n{done.stdout}\n{done.stderr[-3000:]}"
    assert result["skipped"] is None, summary
    assert result["errors"] == [], summary
    assert result["lost"] == 0, summary
    assert result["faults"] == KILLS, summary
    assert result["duplicates"] <= result["bound"] == KILLS, summary
    assert done.returncode == 0, summary
