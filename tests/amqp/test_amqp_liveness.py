"""``asynctask.liveness`` on AMQP: the broker watches the connection, so the supervisor's
calls do nothing and an owned consumer is an ordinary one."""

from __future__ import annotations

from asynctask.liveness import NoLiveness, new_owner
from asynctask.testing import unique_queue
from asynctask.testing.contract import open_transport


def test_liveness_is_a_no_op_and_an_owned_consumer_works(amqp_uri: str) -> None:
    # Given a task and the supervisor's liveness for an owner
    transport = open_transport(amqp_uri)
    try:
        queue = unique_queue("live")
        transport.submit_task(queue, {"n": 1})
        owner = new_owner()
        liveness = transport.liveness(queue, owner)
        # Then it is a NoLiveness: beating and ending touch nothing
        assert isinstance(liveness, NoLiveness)
        liveness.beat()
        # And a consumer made with the owner takes and settles the task as any other
        with transport.consumer(queue, owner=owner) as consumer:
            delivery = consumer.reserve(timeout=5)
            assert delivery is not None and delivery.payload == {"n": 1}
            assert liveness.end({delivery.id}) == 0
            consumer.ack(delivery)
        assert transport.queue_stats(queue).ready == 0
        transport.purge(queue)
    finally:
        transport.close()
