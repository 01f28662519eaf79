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
        timeout=240,  # the machine is shared: seconds alone, minutes under load
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
    # and without --peers no peer row is shown (never a quoted rate)
    assert not any(k.startswith("peer") for k in results["transports"]["filesys"]["measures"])
    # and its async table has a rate at each child_concurrency, beside the ideal
    for concurrency in (1, 10, 100, 500):
        row = results["transports"]["filesys"]["measures"][f"async_{concurrency}"]
        assert row["ours"] > 0 and row["reference"] == concurrency / 0.05
    # and the table was printed
    assert "submit, one by one" in done.stdout


@pytest.mark.slow
def test_quick_bench_with_peers_drains_huey_in_the_same_rounds(tmp_path):
    # Given the peers' own venv, made as `make bench PEERS=1` makes it
    made = subprocess.run(
        ["make", ".venv-peers/bin/python"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert made.returncode == 0, made.stdout + made.stderr
    out = tmp_path / "bench.json"

    # When the quick drain runs on filesys with --peers, writing its docs
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "filesys", "--steps", "drain",
         "--peers", "--json", str(out), "--docs", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip

    # Then Huey (SqliteHuey) drained with its own consumer, and ours is compared with it
    assert done.returncode == 0, done.stdout + done.stderr
    measures = json.loads(out.read_text())["transports"]["filesys"]["measures"]
    huey = measures["peer_huey"]
    assert huey["reference"] > 0 and "huey_consumer" in huey["note"]
    assert measures["peer"]["reference"] == huey["reference"]
    # and the docs' Peers section names its durability settings
    doc = (tmp_path / "benchmarks.md").read_text()
    assert "## Peers" in doc and "SqliteHuey(fsync=True)" in doc
