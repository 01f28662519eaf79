"""The contract suite on RabbitMQ, with a probe that reads and writes the broker with
plain kombu, as the package README documents the storage."""

from __future__ import annotations

from collections.abc import Iterator

import amqp
import kombu
import pytest

from asynctask.testing import TransportContract
from asynctask_amqp.topology import LADDERS, rung_names
from tests.amqp.conftest import rabbitmqctl, vhost_of


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
        if consumers:
            # AMQP cannot count unacknowledged messages; the broker's CLI can
            for line in rabbitmqctl(
                "list_queues", "-p", self.vhost, "-q", "--no-table-headers", "name", "messages"
            ).splitlines():
                name, _, count = line.partition("\t")
                if name == queue:
                    ready = int(count)
        for ladder in LADDERS:
            ready += sum(self._count(name)[0] for name in rung_names(queue, ladder))
        return ready

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

    def close(self) -> None:
        self.connection.close()


class TestAmqpTransport(TransportContract):
    @pytest.fixture
    def transport_uri(self, amqp_uri: str) -> str:
        # heartbeat=1: a silently dead consumer's tasks come back within 3 s
        return f"{amqp_uri}?heartbeat=1&retry_timeout=5"

    @pytest.fixture
    def probe(self, transport_uri: str) -> Iterator[AmqpProbe]:
        probe = AmqpProbe(transport_uri)
        yield probe
        probe.close()
