"""The one-by-one submit's statement, prepared once per pooled connection and sent through
libpq (``asynctask_pgsql.pooled``): what the server may do to a prepared statement does
not lose a submit."""

from __future__ import annotations

from typing import Any

import pytest

from asynctask.testing import unique_queue
from asynctask.testing.contract import open_transport

from .conftest import DATABASE, HOST, PgsqlProbe


@pytest.mark.usefixtures("pg_server")
def test_a_submit_after_the_server_forgot_the_prepared_statement_is_stored() -> None:
    """Failed with the re-prepare removed: TransportError, "prepared statement
    asynctask_put_one does not exist" (as behind a pooler that sends DISCARD ALL)."""
    # Given a transport whose one connection has prepared the submit statement
    uri = f"pgsql://{HOST}/{DATABASE}?pool_size=1"
    queue = unique_queue()
    with open_transport(uri) as transport:
        transport.submit_task(queue, {"n": 1})
        # When the server forgets it (DEALLOCATE ALL on that same connection)
        pool: Any = transport._ready_pool()
        conn = pool.getconn()
        try:
            conn.execute("DEALLOCATE ALL")
        finally:
            pool.putconn(conn)
        # Then the next submits are stored all the same
        transport.submit_task(queue, {"n": 2})
        transport.submit_task(queue, {"n": 3})
        assert PgsqlProbe().stored(queue) == 3
        transport.purge(queue)


@pytest.mark.usefixtures("pg_server")
def test_a_priority_given_as_an_int_enum_is_stored() -> None:
    """Failed with the libpq parameters written by ``repr``: an ``IntEnum`` priority
    (accepted by the submit's checks) was sent as ``<Urgency.HIGH: 5>`` and PostgreSQL
    refused it (InvalidTextRepresentation), where psycopg had written ``5``."""
    import enum

    class Urgency(enum.IntEnum):
        HIGH = 5

    queue = unique_queue()
    with open_transport(f"pgsql://{HOST}/{DATABASE}") as transport:
        task_id = transport.submit_task(queue, {"n": 1}, priority=Urgency.HIGH)
        with transport.consumer(queue) as consumer:
            delivery = consumer.reserve(5)
            assert delivery is not None and delivery.id == task_id
            consumer.ack(delivery)
