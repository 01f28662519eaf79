"""``bench.taskcost`` and the bench's ``cost`` step (issue 20): a worker child's cost per task.

Round trips per task do not depend on the machine's load, so they are asserted; the
microseconds are only checked to add up.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis

from asynctask.testing import require_service
from asynctask.testing.contract import open_transport
from bench import taskcost

ROOT = Path(__file__).resolve().parents[2]
SERVER = "redis://127.0.0.1:6379/9"


@pytest.fixture
def redis_uri() -> str:
    client = redis.Redis.from_url(SERVER)
    require_service("Redis at 127.0.0.1:6379", client.ping)
    client.close()
    return SERVER


def test_a_builtin_counts_in_the_part_of_its_callers_and_the_driver_in_none():
    # Given a profile: the run loop and the consumer each call isinstance once, and
    # redis-py's reply parser runs inside a round trip
    runner = ("/src/asynctask/runner.py", 1, "_run_one")
    consumer = ("/src/asynctask_redis/consumer.py", 1, "reserve")
    builtin = ("~", 0, "<built-in method builtins.isinstance>")
    driver = ("/site-packages/redis/_parsers/resp3.py", 1, "_read_response")
    profile = SimpleNamespace(
        stats={
            runner: (1, 1, 0.002, 0.01, {}),
            consumer: (1, 1, 0.003, 0.01, {}),
            builtin: (2, 2, 0.001, 0.001, {runner: (1, 1, 0, 0), consumer: (1, 1, 0, 0)}),
            driver: (1, 1, 0.5, 0.5, {consumer: (1, 1, 0, 0)}),
        }
    )

    # When it is split by part
    found, calls = taskcost.shares(profile)  # type: ignore[arg-type]

    # Then the builtin's time is shared by its two callers, the driver's counts nowhere
    assert found["runner"] == pytest.approx(0.0025)
    assert found["consumer"] == pytest.approx(0.0035)
    assert sum(found.values()) == pytest.approx(0.006)
    assert calls == 5


def test_untracked_round_trips_per_task_fall_as_one_over_prefetch(redis_uri):
    """Shown failing once with the redis consumer taking one task per move (its
    ``_want`` returning 1): 1.02 round trips per task at prefetch 4."""
    # Given a filled redis queue drained by a worker child's run loop, statuses off
    transport = open_transport(redis_uri)
    try:
        # When it drains at prefetch 1, 4 and 32
        costs = {p: taskcost.measure(transport, p, 320, tracked=False) for p in (1, 4, 32)}
    finally:
        transport.close()

    # Then a task costs one round trip at prefetch 1 and about 1/prefetch beyond: the
    # acknowledgements ride with the next move (a consumer that sent each ack on its own
    # would stay at 1 or more at every prefetch)
    assert 0.99 <= costs[1].trips <= 1.05
    assert costs[4].trips <= 0.3
    assert costs[32].trips <= 0.08
    for cost in costs.values():
        # and the parts of our code add up to our share of the wall time
        assert sum(cost.parts.values()) == pytest.approx(cost.ours, rel=1e-6)
        assert cost.round_trip <= cost.wall
        assert cost.calls > 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_cost_step_writes_its_rows_and_table(redis_uri, tmp_path):
    # Given the quick bench's cost step on redis
    out, docs = tmp_path / "bench.json", tmp_path / "docs"
    command = [sys.executable, "-m", "bench", "--quick", "--only", "redis", "--steps", "cost"]
    command += ["--json", str(out), "--docs", str(docs)]

    # When it runs
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=540)

    # Then it has a drain at each prefetch beside the raw client taking 100 at a time,
    # the target on prefetch 32, and the per-task table
    assert done.returncode == 0, done.stdout + done.stderr
    redis_result = json.loads(out.read_text())["transports"]["redis"]
    measures = redis_result["measures"]
    for key in ("cost_p1", "cost_p4", "cost_p32", "cost_p32_untracked"):
        assert measures[key]["ours"] > 0 and measures[key]["reference"] > 0
        assert measures[key]["reference_label"] == "LPOP 100 at a time"
    assert measures["cost_p32"]["target"] == {"op": ">=", "value": 0.3}
    costs = redis_result["costs"]
    assert [(c["prefetch"], c["tracked"]) for c in costs] == [
        (1, True), (4, True), (32, True), (1, False), (4, False), (32, False),
    ]  # fmt: skip
    assert "Where one worker child's time per task goes" in (docs / "benchmarks.md").read_text()
