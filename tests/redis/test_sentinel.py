"""``redis+sentinel://``: the transport follows the master through a failover (a master,
a replica and a Sentinel of the test's own on loopback ports; never the shared Redis)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from asynctask.testing.contract import open_transport
from chaos.redis_ha import stop_processes
from tests.support import free_port, start_redis_server

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis")


@pytest.fixture
def sentinel_setup() -> Iterator[tuple[str, subprocess.Popen[bytes], int]]:
    """(URI, the master's process, the replica's port)."""
    directory = tempfile.mkdtemp(prefix="asynctask-sentinel-")
    master_port, replica_port, sentinel_port = free_port(), free_port(), free_port()
    common = ["--save", "", "--appendonly", "no", "--dir", directory]
    processes = [start_redis_server(master_port, common, None)]
    processes.append(
        start_redis_server(
            replica_port, [*common, "--replicaof", "127.0.0.1", str(master_port)], None
        )
    )
    conf = f"{directory}/sentinel.conf"
    with open(conf, "w") as f:
        f.write(
            f"port {sentinel_port}\nbind 127.0.0.1\ndir {directory}\n"
            f"sentinel monitor svc 127.0.0.1 {master_port} 1\n"
            "sentinel down-after-milliseconds svc 1000\n"
            "sentinel failover-timeout svc 5000\n"
        )
    processes.append(
        subprocess.Popen(
            ["redis-server", conf, "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    try:
        sentinel = redis.Redis(port=sentinel_port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if sentinel.execute_command("SENTINEL", "get-master-addr-by-name", "svc"):
                    break
            except redis.RedisError:
                pass
            time.sleep(0.1)
        sentinel.close()
        yield f"redis+sentinel://127.0.0.1:{sentinel_port}/svc", processes[0], replica_port
    finally:
        stop_processes(processes)
        shutil.rmtree(directory, ignore_errors=True)


def test_sentinel_transport_follows_the_master_through_a_failover(
    sentinel_setup: tuple[str, subprocess.Popen[bytes], int],
) -> None:
    uri, master, replica_port = sentinel_setup
    queue = f"t_{uuid.uuid4().hex[:12]}"
    transport = open_transport(f"{uri}?recovery_seconds=3&retry_timeout=30")
    try:
        transport.submit_tasks(queue, [{"n": i} for i in range(5)])
        # the replica has the tasks before the master goes (WAIT: one replica acked)
        # (replication is asynchronous: wait until the replica holds them)
        replica = redis.Redis(port=replica_port)
        deadline = time.monotonic() + 20
        while replica.llen(f"asynctask_{queue}") < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        replica.close()
        master.terminate()
        master.wait(10)
        # every call during the failover retries (retry_timeout) until the new master
        transport.submit_task(queue, {"n": 5})
        got = []
        consumer = transport.consumer(queue)
        deadline = time.monotonic() + 30
        while len(got) < 6 and time.monotonic() < deadline:
            delivery = consumer.reserve(1.0)
            if delivery is not None:
                got.append(delivery.payload["n"])
                consumer.ack(delivery)
        consumer.close()
        assert sorted(got) == [0, 1, 2, 3, 4, 5]
        promoted = redis.Redis(port=replica_port)
        assert promoted.info("replication")["role"] == "master"
        promoted.close()
    finally:
        transport.close()


def test_a_consumer_open_through_the_failover_follows_the_new_master() -> None:
    """A consumer keeps its own connection; after the master dies it must ask the
    Sentinels again, not reconnect to the dead address. Failed before
    ``SentinelServer.moved`` counted a dropped connection (redis-py 8 reconnects a
    dropped ``SentinelManagedConnection`` to its old host): the reserve gave up after
    retry_timeout, connection refused by the killed master."""
    from chaos.redis_ha import private_sentinel

    with private_sentinel() as group:
        queue = f"t_{uuid.uuid4().hex[:12]}"
        transport = open_transport(group.uri(recovery_seconds="3", retry_timeout="15"))
        try:
            # Given a consumer that has served a task on the master
            transport.submit_task(queue, {"n": 1})
            consumer = transport.consumer(queue)
            first = consumer.reserve(5)
            assert first is not None
            consumer.ack(first)
            # When the master is killed and Sentinel promotes the replica
            group.kill_master()
            deadline = time.monotonic() + 30
            while group.master() in (None, group.master_port):
                assert time.monotonic() < deadline, "Sentinel did not promote the replica"
                time.sleep(0.05)
            transport.submit_task(queue, {"n": 2})
            # Then the same consumer takes the next task from the new master
            began = time.monotonic()
            second = consumer.reserve(10)
            assert second is not None and second.payload == {"n": 2}
            assert time.monotonic() - began < 10
            consumer.ack(second)
            consumer.close()
        finally:
            transport.close()
