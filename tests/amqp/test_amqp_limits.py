"""Global limits on AMQP: the broker keeps no shared state for them, so
``asynctask workers`` refuses a queue that has them, saying what to do."""

from __future__ import annotations

import subprocess

import pytest

from asynctask.testing import clean_environment, workers_command


@pytest.mark.parametrize(
    "limits",
    [{"max_running": 3}, {"rate_max_calls": 5, "rate_period": 1, "rate_scope": "global"}],
)
def test_workers_refuse_global_limits_on_amqp(amqp_uri, limits):
    # Given a queue with global limits on the amqp transport
    command = workers_command(
        amqp_uri, {"limited": {"worker": "test_slow", **limits}}, "--halt-when-empty"
    )
    # When asynctask workers starts
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=60, env=clean_environment()
    )
    # Then it stops at once with exit code 2, naming the queue, why, and what to do
    assert done.returncode == 2, done.stderr
    assert "queue 'limited' has global limits" in done.stderr
    assert "the amqp transport keeps no shared state" in done.stderr
    assert "use redis, pgsql or filesys" in done.stderr
    assert "guest" not in done.stderr.replace("guest:***", "")
