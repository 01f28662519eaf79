"""A master of the cluster killed mid-drain: the consumer carries on after the failover
(its replica promoted); no task is lost, duplicates are counted (at least once)."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
import uuid
from collections import Counter

import pytest
from redis.crc import key_slot

from asynctask.errors import TransportError
from asynctask.testing.contract import open_transport
from tests.redis.cluster_support import LocalCluster

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis")


def test_queues_and_counts_span_every_master(cluster: LocalCluster) -> None:
    prefix = f"c{uuid.uuid4().hex[:8]}"
    transport = open_transport(f"{cluster.uri}?key_prefix={prefix}")
    admin = cluster.client()
    names = [f"q_{i}_{uuid.uuid4().hex[:6]}" for i in range(8)]
    for i, name in enumerate(names):
        transport.submit_tasks(name, [{"i": i}] * (i + 1))
    masters = {
        admin.nodes_manager.get_node_from_slot(key_slot(f"{prefix}_{{{n}}}".encode())).name
        for n in names
    }
    listed = {q.name: q.ready for q in transport.queues()}
    assert listed == {name: i + 1 for i, name in enumerate(names)}
    assert len(masters) > 1  # the queues really are on several masters
    assert sum(transport.purge(name) for name in names) == sum(range(1, 9))
    assert transport.queues() == []
    transport.close()
    admin.close()


def test_killing_the_queues_master_mid_drain_loses_no_task(cluster: LocalCluster) -> None:
    total = 300
    queue = f"t_{uuid.uuid4().hex[:12]}"
    prefix = f"c{uuid.uuid4().hex[:8]}"
    transport = open_transport(f"{cluster.uri}?key_prefix={prefix}&recovery_seconds=3")
    admin = cluster.client()
    node = admin.nodes_manager.get_node_from_slot(key_slot(f"{prefix}_{{{queue}}}".encode()))
    transport.submit_tasks(queue, [{"n": n} for n in range(total)])
    # the submit is on the replica before the kill (replication is asynchronous)
    admin.execute_command("WAIT", 1, 5000, target_nodes=node)
    taken: list[int] = []

    def drain() -> None:
        deadline = time.monotonic() + 60
        with transport.consumer(queue) as consumer:
            while len(set(taken)) < total and time.monotonic() < deadline:
                try:
                    delivery = consumer.reserve(timeout=1)
                except TransportError:  # an outage mid-failover: try again
                    time.sleep(0.2)
                    continue
                if delivery is None:
                    continue
                time.sleep(0.002)
                taken.append(delivery.payload["n"])
                with contextlib.suppress(TransportError):  # lost ack: a duplicate later
                    consumer.ack(delivery)

    thread = threading.Thread(target=drain)
    thread.start()
    deadline = time.monotonic() + 30
    while len(taken) < total // 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    killed_at = len(taken)
    cluster.processes[node.port].kill()
    thread.join(90)
    transport.close()
    admin.close()
    counts = Counter(taken)
    lost = total - len(counts)
    duplicated = sum(c - 1 for c in counts.values())
    print(f"killed after {killed_at} tasks: lost {lost}, duplicated {duplicated}")
    assert 0 < killed_at < total
    assert lost == 0
