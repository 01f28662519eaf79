"""`make bench QUICK=1` in CI: the harness itself runs end to end (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_step(
    tmp_path: Path, name: str, step: str, timeout: float, *more: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run one quick bench step on one transport; its run and the transport's results.
    Skips when the bench skipped the transport; fails on an exit code or a step error."""
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", name, "--steps", step,
         "--json", str(out), *more],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    transport: dict[str, Any] = json.loads(out.read_text())["transports"][name]
    if transport["skipped"]:
        pytest.skip(transport["skipped"])
    assert transport["errors"] == []
    return done, transport


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


#: every step but the realistic shapes, which have their own test (each launches workers)
STEPS = "submit,drain,latency,depth,depth_raw,prefetch,scale,asyncio,status"


@pytest.mark.slow
@pytest.mark.timeout(300)
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
            "--steps",
            STEPS,
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


# `make test-long`: the harness's own smoke run is the test above; these launch workers
# (the shapes) or install the peers' venv from the package index (the peers)
@pytest.mark.slow
@pytest.mark.long
@pytest.mark.timeout(300)
def test_quick_bench_measures_the_realistic_shapes_on_filesys(tmp_path):
    # Given the embedded transport
    out = tmp_path / "bench.json"

    # When the quick bench runs its realistic shapes on it
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "filesys", "--steps", "shapes",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )  # fmt: skip

    # Then 1 KB payloads are submitted and drained beside the raw client, 20 queues are
    # drained by one asynctask workers, and memory is read at both depths
    assert done.returncode == 0, done.stdout + done.stderr
    measures = json.loads(out.read_text())["transports"]["filesys"]["measures"]
    for key in ("submit_batch_1kb", "drain_1kb", "queues_20", "memory_server", "memory_worker"):
        assert measures[key]["ours"] > 0 and measures[key]["reference"] > 0, key
    assert measures["queues_20"]["note"].startswith(f"{500 // 20 * 20:,} tasks")
    # the folder holds more at depth 4,000 than at 100
    assert measures["memory_server"]["ours"] > measures["memory_server"]["reference"]


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.timeout(600)
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


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_bench_measures_the_pgsql_table_fresh_and_churned(tmp_path):
    # Given the shared PostgreSQL (the step is skipped with the transport when it is down)
    # When the quick pgsql table step runs (20,000 tasks churned through its own schema)
    done, transport = run_step(tmp_path, "pgsql", "pgtable", timeout=540)

    # Then each index's and the trigger's cost is a row, and submit, drain and wake-up are
    # measured against the raw client on the fresh and on the churned table
    measures = transport["measures"]
    for key in ("insert_bare", "insert_pkey", "insert_task_id", "insert_ready",
                "insert_indexes", "insert_trigger"):  # fmt: skip
        assert measures[key]["ours"] > 0 and "INSERT ... SELECT" in measures[key]["note"], key
    for state in ("fresh", "churned"):
        for key in (f"submit_one_{state}", f"drain_1_{state}", f"latency_p50_{state}"):
            assert measures[key]["ours"] > 0 and measures[key]["reference"] > 0, key
    assert "20,000 tasks passed" in done.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_bench_measures_what_wait_replicas_costs(tmp_path):
    # Given a master and a replica the step starts itself (the shared Redis has none)
    # When the quick replicas step runs alone
    _, transport = run_step(tmp_path, "redis", "replicas", timeout=280)

    # Then submit and drain are measured with wait_replicas=1 beside without
    for key in ("wait_submit", "wait_drain"):
        row = transport["measures"][key]
        assert row["ours"] > 0 and row["reference"] > 0, key
        assert "replica" in row["note"], key


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_bench_untracked_measures_the_base_commits_steps(tmp_path):
    """``--untracked`` (what ``bench.compare --untracked`` gives this tree): the steps of
    00bd0fa's bench run with every queue untracked and workers with tracking off."""
    # When the untracked bench of those steps runs on filesys
    _, transport = run_step(tmp_path, "filesys", "submit,drain,depth,prefetch", 280, "--untracked")
    # Then every figure of those steps is measured
    assert {"submit_one", "submit_batch", "drain_1", "depth", "prefetch"} <= set(
        transport["measures"]
    )
