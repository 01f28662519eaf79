"""The contract suite on RabbitMQ, with a probe that reads and writes the broker with
plain kombu, as the package README documents the storage."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import amqp
import kombu
import pytest

from asynctask.testing import TransportContract, unique_queue
from asynctask.testing.contract import SECRET, open_transport
from asynctask.testing.status import StatusContract
from asynctask.testing.supervised import SupervisedStatusContract
from asynctask.transport import Transport
from asynctask_amqp.topology import LADDERS, rung_names
from tests.amqp.conftest import USER, VHOST, on_shared_ladder, rabbitmqctl, vhost_of


class AmqpProbe:
    """Counts messages with passive declares, and publishes as a foreign producer would."""

    def __init__(self, uri: str) -> None:
        self.vhost = vhost_of(uri)
        self.connection = kombu.Connection(uri.partition("?")[0])
        self.connection.ensure_connection(max_retries=0, reraise_as_library_errors=False)
        self.channel = self.connection.connection.channel()

    def _count(self, name: str) -> tuple[int, int]:
        try:
            ok = self.channel.queue_declare(name, passive=True)
        except amqp.exceptions.NotFound:
            return 0, 0  # py-amqp reopens the channel
        return ok.message_count, ok.consumer_count

    def stored(self, queue: str) -> int:
        ready, consumers = self._count(queue)
        settle = time.monotonic() + 1.0
        while consumers and time.monotonic() < settle:
            # a consumer whose connection just closed (a killed worker's) is gone in a
            # moment: then the passive count is the whole answer, without the slow CLI
            time.sleep(0.1)
            ready, consumers = self._count(queue)
        if consumers:
            ready = self._listed(queue, consumers)
        for ladder in LADDERS:  # per-queue ladders of earlier versions
            names = rung_names(queue, ladder)
            try:  # declared, and expiring, together: the first tells
                self.channel.queue_declare(names[0], passive=True)
            except amqp.exceptions.NotFound:
                continue
            ready += sum(self._count(name)[0] for name in names)
        for kind in ("classic", "quorum"):  # the vhost's shared ladders
            ready += len(on_shared_ladder(self.connection, queue, kind))
        return ready

    def _listed(self, queue: str, consumers: int) -> int:
        """Ready and unacknowledged messages of ``queue``, from the broker's CLI (AMQP
        cannot count unacknowledged messages). A quorum queue's figures there are
        refreshed every few seconds: they are read once they show the consumers that
        the queue has now."""
        deadline = time.monotonic() + 15
        while True:
            for line in rabbitmqctl(
                "list_queues", "-p", self.vhost, "-q", "--no-table-headers",
                "name", "messages", "consumers", "type",
            ).splitlines():  # fmt: skip
                name, count, listed, kind = [*line.split("\t"), "", "", ""][:4]
                if name != queue:
                    continue
                fresh = kind.strip() != "quorum" or int(listed or 0) == consumers
                if fresh or time.monotonic() > deadline:
                    return int(count)
            if time.monotonic() > deadline:
                return 0
            time.sleep(0.5)
            consumers = self._count(queue)[1]

    def inject(self, queue: str, text: str) -> None:
        # the storage format of the README: declare (as kombu.SimpleQueue would), publish
        self.channel.exchange_declare(queue, "direct", durable=True, auto_delete=False)
        self.channel.queue_declare(queue, durable=True, auto_delete=False)
        self.channel.queue_bind(queue, exchange=queue, routing_key=queue)
        self.channel.basic_publish(
            amqp.Message(text.encode(), content_type="application/json", delivery_mode=2),
            exchange=queue,
            routing_key=queue,
        )

    def drop_connections(self) -> None:
        """``rabbitmqctl close_connection`` on every connection this test process (and its
        children, such as a relay) has open to the broker, and on no other."""
        ours = {port for port in _local_ports_to(5672) if port != self._own_port()}
        listing = rabbitmqctl("list_connections", "-q", "--no-table-headers", "pid", "name")
        for line in listing.splitlines():
            pid, _, name = line.strip().partition("\t")
            port = name.partition(" -> ")[0].rpartition(":")[2]
            if port.isdigit() and int(port) in ours:
                rabbitmqctl("close_connection", pid, "asynctask contract test")

    def _own_port(self) -> int:
        sock = self.connection.connection.sock
        return int(sock.getsockname()[1]) if sock is not None else -1

    def close(self) -> None:
        self.connection.close()


def _local_ports_to(remote_port: int) -> set[int]:
    """Local ports of the TCP connections to ``remote_port`` held by this process tree."""
    pids, i = [os.getpid()], 0
    while i < len(pids):
        for task in os.listdir(f"/proc/{pids[i]}/task"):
            try:
                with open(f"/proc/{pids[i]}/task/{task}/children") as f:
                    pids += [int(p) for p in f.read().split()]
            except OSError:
                continue
        i += 1
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in f.read().splitlines()[1:]:
                fields = row.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == remote_port:
                    ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


class TestAmqpTransport(TransportContract):
    @pytest.mark.xfail(
        strict=True,
        reason="AMQP's bound (README, Outages): a publish that reached the broker but whose "
        "confirm was lost is published again by the retry, so the task is stored twice. "
        "RabbitMQ has no idempotent publish (no deduplication by message_id without a "
        "plugin) and no read of a queue that leaves messages in place, so the retry cannot "
        "tell; a dedup by id at consume would hide only the second run seen by the same "
        "consumer, not the second message this test counts",
    )
    def test_a_submit_retried_after_a_lost_reply_is_stored_once(self, transport, queue, probe):
        super().test_a_submit_retried_after_a_lost_reply_is_stored_once(transport, queue, probe)

    @pytest.fixture
    def transport_uri(self, amqp_uri: str) -> str:
        # heartbeat=1: a silently dead consumer's tasks come back within 3 s
        return f"{amqp_uri}?heartbeat=1&retry_timeout=5"

    @pytest.fixture
    def secret_uri(self, amqp_uri: str) -> str:
        # the test user's password is SECRET (see conftest.PASSWORD)
        return f"amqp://{USER}:{SECRET}@127.0.0.1:5672/{VHOST}"

    @pytest.fixture
    def probe(self, transport_uri: str) -> Iterator[AmqpProbe]:
        probe = AmqpProbe(transport_uri)
        yield probe
        probe.close()


class TestAmqpStatus(StatusContract, SupervisedStatusContract):
    """The status contract on RabbitMQ, whose statuses live in the store named by
    ``asynctask_state``: here a filesys folder (any transport keeping statuses will do;
    a folder needs no other server). Queues declared with ``max_priority=9``."""

    @pytest.fixture
    def transport(self, amqp_uri: str, tmp_path) -> Iterator[Transport]:
        transport = open_transport(f"{amqp_uri}?heartbeat=1&retry_timeout=5&max_priority=9")
        # (poll=10: a wait on the folder not woken by inotify is late)
        transport.state_uri = f"filesys:{tmp_path / 'state'}?poll=10"
        yield transport
        transport.close()

    @pytest.fixture
    def queue(self) -> str:
        return unique_queue()

    @pytest.fixture
    def probe(self, amqp_uri: str) -> Iterator[AmqpProbe]:
        probe = AmqpProbe(amqp_uri)
        yield probe
        probe.close()

    @pytest.fixture
    def state_store_uri(self, tmp_path) -> str:
        return f"filesys:{tmp_path / 'other-state'}"


class TestAmqpStatusInRedis(TestAmqpStatus):
    """The same contract with the statuses in Redis, whose store gives a status feed:
    starts and outcomes sent without waiting (``asynctask_redis.statusfeed``)."""

    @pytest.fixture
    def transport(self, amqp_uri: str, redis_state: str) -> Iterator[Transport]:
        transport = open_transport(f"{amqp_uri}?heartbeat=1&retry_timeout=5&max_priority=9")
        transport.state_uri = redis_state
        yield transport
        transport.close()


class TestAmqpStatusInPgsql(TestAmqpStatus):
    """The same contract with the statuses in PostgreSQL, whose store deletes final
    statuses past their TTL itself (no pgsql consumer runs on that schema:
    ``asynctask_pgsql.forget``; the rows are counted in ``tests/pgsql/test_status.py``)."""

    @pytest.fixture
    def transport(self, amqp_uri: str, pgsql_state: str) -> Iterator[Transport]:
        transport = open_transport(f"{amqp_uri}?heartbeat=1&retry_timeout=5&max_priority=9")
        transport.state_uri = pgsql_state
        yield transport
        transport.close()


# the whole contract again on quorum queues: `make test-long`; `make test` keeps the
# quorum tests of test_amqp.py and the leader stopped on a cluster (test_cluster.py)
@pytest.mark.long
class TestAmqpQuorumTransport(TestAmqpTransport):
    """The same contract with ``?queue_type=quorum``: the task queues, their failed
    stores and the vhost's ladder are quorum queues (issue 19 part 3)."""

    @pytest.fixture
    def transport_uri(self, amqp_uri: str) -> str:
        return f"{amqp_uri}?heartbeat=1&retry_timeout=5&queue_type=quorum"

    @pytest.fixture
    def secret_uri(self, amqp_uri: str) -> str:
        return f"amqp://{USER}:{SECRET}@127.0.0.1:5672/{VHOST}?queue_type=quorum"
