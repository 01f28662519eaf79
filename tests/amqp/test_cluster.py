"""Quorum queues on a 3-node RabbitMQ cluster of the test's own (issue 19 part 3): the
node leading the queue is stopped mid-drain, and no task is lost; the workers reconnect
to another node listed in the URI. ``make chaos`` runs the long version (``chaos.quorum``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from asynctask.testing import REQUIRE_VARIABLE, unique_queue
from asynctask.testing.contract import open_transport
from chaos.cluster import RabbitCluster, available
from support import events, wait_for

TASKS = 60


@pytest.fixture(scope="module")
def cluster() -> Iterator[RabbitCluster]:
    why = available()
    if why is not None:
        if os.environ.get(REQUIRE_VARIABLE) == "1":
            pytest.fail(f"a RabbitMQ cluster cannot be started here: {why}")
        pytest.skip(f"a RabbitMQ cluster cannot be started here: {why}")
    with RabbitCluster() as cluster:
        yield cluster


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_stopping_the_leader_mid_drain_loses_no_task(cluster, ledger, start_workers):
    # Given a quorum queue on the cluster holding 60 tasks, and a URI naming every node
    uri = f"{cluster.uri()}?queue_type=quorum&heartbeat=1&retry_timeout=60"
    queue = unique_queue("cluster")
    with open_transport(uri) as transport:
        payloads = [{"ledger": str(ledger), "n": n, "seconds": 0.05} for n in range(TASKS)]
        transport.submit_tasks(queue, payloads)
    leader = cluster.leader(queue)
    # When two children drain it, and the node leading the queue stops a third of the way
    workers = start_workers(
        uri, {queue: {"worker": "test_record", "concurrency": 2}}, "--halt-when-empty", "-q"
    )
    wait_for(lambda: len(events(ledger, "done")) >= TASKS // 3, 120, "a third of the drain")
    cluster.stop_node(leader)
    # Then the batch run ends well, every task done: none lost, a few may run twice (the
    # ones in flight when the node stopped)
    assert workers.wait(300) == 0
    done = [event["payload"]["n"] for event in events(ledger, "done")]
    assert set(done) == set(range(TASKS))
    assert len(done) - TASKS <= 4, sorted(done)
    # and another node leads the queue now
    assert cluster.leader(queue) in cluster.running()
