"""`make bench QUICK=1` in CI: the harness itself runs end to end (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = (
    "submit_one",
    "submit_batch",
    "drain_1",
    "drain_2",
    "startup_1",
    "startup_2",
    "latency_p50",
    "latency_p99",
    "depth",
    "depth_raw",
    "prefetch",
    "queues_many",
    "queues_deep",
    "drain_deep",
)


@pytest.mark.slow
def test_quick_bench_measures_every_measure_on_the_embedded_transports(tmp_path):
    # Given the two transports that need no server
    out = tmp_path / "bench.json"

    # When the quick benchmark runs on them as a separate process
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--only",
            "localmem,filesys",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )

    # Then it succeeds and its JSON has every measure of both, each a positive number
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())
    assert results["quick"] is True
    for name in ("localmem", "filesys"):
        transport = results["transports"][name]
        assert transport["skipped"] is None
        assert transport["errors"] == []
        measures = transport["measures"]
        assert set(REQUIRED) <= set(measures), f"{name} lacks {set(REQUIRED) - set(measures)}"
        for key in REQUIRED:
            assert measures[key]["ours"] > 0, (name, key)
    # and filesys, with a measured peer, is compared with it
    assert results["transports"]["filesys"]["measures"]["peer"]["ratio"] > 0
    # and its async table has a rate at each child_concurrency, beside the ideal
    for concurrency in (1, 10, 100, 500):
        row = results["transports"]["filesys"]["measures"][f"async_{concurrency}"]
        assert row["ours"] > 0 and row["reference"] == concurrency / 0.05
    # and the table was printed
    assert "submit, one by one" in done.stdout
