"""The short failover scenario in ``make test``: a Redis master SIGKILLed mid-drain, on a
Cluster and under Sentinel of the test's own, with ``wait_replicas=1``: no confirmed
submit is lost (``chaos.failover``; ``make chaos`` runs the long version, with and
without WAIT, and writes the figures to docs/reliability.md).

The replica is cut off for the 0.5 s before the kill (``lag``: stopped, its link closed),
so the master has confirmed writes the promoted replica lacks: without ``WAIT`` they are lost. Shown
failing against a broken transport: with the ``WAIT`` left out of
``asynctask_redis.replication.Waited`` (it returns ``replicas`` at once), lost > 0.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from chaos import failover

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
    reason="needs redis-server and redis-cli",
)


@pytest.mark.slow
@pytest.mark.parametrize("topology", failover.TOPOLOGIES)
def test_a_master_killed_mid_drain_loses_no_confirmed_task_with_wait(
    topology: str, tmp_path: Path
) -> None:
    # Given asynctask workers draining a queue a producer feeds, with wait_replicas=1
    # When the queue's master is SIGKILLed half way through the feed, its replica cut off
    outcome = failover.run(topology, True, 200, tmp_path, feed_seconds=2, lag=0.5)
    # Then every submit that returned ran, and the drain went on after the failover
    assert not outcome.notes, outcome.notes
    assert outcome.confirmed > 0
    assert outcome.lost == 0, outcome
    assert math.isfinite(outcome.pause), "the drain did not resume after the kill"
