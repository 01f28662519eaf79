"""How many rows a consumer's RESERVE takes (issue 20): with no prefetch set, a take sized
from the tasks' run time (``asynctask.window``): the largest for a drain of short tasks,
fewer as tasks get long, so that the last one held starts within ``window_budget``; a
prefetch the user set is taken as it is. Read from the table: the rows a consumer holds
reserved right after the RESERVE that filled its buffer."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from asynctask.testing import unique_queue
from asynctask.testing.contract import open_transport
from asynctask.transport import Consumer
from asynctask.window import AdaptivePrefetch

from .conftest import CONNINFO, DATABASE, HOST


@pytest.fixture
def own_schema(pg_server: None) -> Iterator[str]:
    """A schema of this test's own, dropped after it."""
    name = f"asynctask_t_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(CONNINFO, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def takes(schema: str, queue: str, consumer: Consumer, run: float) -> list[int]:
    """Drain ``queue``, each task running ``run`` seconds: the rows each RESERVE took,
    read past the transport after each task handed out (rows reserved that were not
    before: acknowledged rows go at the consumer's next statement, whichever it is)."""
    sizes: list[int] = []
    seen: set[int] = set()
    with psycopg.connect(CONNINFO, autocommit=True) as probe:
        while (delivery := consumer.reserve(timeout=0.2)) is not None:
            held = probe.execute(
                f"SELECT id FROM {schema}.asynctask_queue"
                " WHERE queue_name = %s AND state = 'reserved'",
                (queue,),
            ).fetchall()
            new = {row_id for (row_id,) in held} - seen
            if new:
                sizes.append(len(new))
                seen |= new
            assert consumer.start(delivery) == "run"
            if run:
                time.sleep(run)
            consumer.ack(delivery)
    return sizes


def test_a_drain_of_short_tasks_takes_64_a_reserve(own_schema: str) -> None:
    """Failed before (a fixed 16): [16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 8]."""
    # Given 200 tasks and a consumer at the transport's default prefetch, whose tasks
    # are short next to its budget (10 s: a loaded machine's pauses count in run time)
    uri = f"pgsql://{HOST}/{DATABASE}?recovery_seconds=600&schema={own_schema}&window_budget=10"
    with open_transport(uri) as transport:
        queue = unique_queue()
        transport.submit_tasks(queue, [{"n": n} for n in range(200)])
        assert isinstance(transport.default_prefetch, AdaptivePrefetch)
        with transport.consumer(queue, prefetch=transport.default_prefetch) as consumer:
            # When it drains them, each task done at once
            sizes = takes(own_schema, queue, consumer, 0.0)
    # Then its first RESERVE takes 16 (no run time known yet), the next ones 64
    assert sizes[0] == 16, sizes
    assert sizes[1:3] == [64, 64], sizes
    assert sum(sizes) == 200, sizes


def test_long_tasks_are_taken_one_at_a_time_within_the_budget(own_schema: str) -> None:
    """Failed before: ``window_budget`` was no option of the pgsql transport."""
    # Given tasks that run 60 ms, and a budget of 50 ms for the last task held to start
    uri = f"pgsql://{HOST}/{DATABASE}?recovery_seconds=600&schema={own_schema}&window_budget=0.05"
    with open_transport(uri) as transport:
        queue = unique_queue()
        transport.submit_tasks(queue, [{"n": n} for n in range(24)])
        with transport.consumer(queue, prefetch=transport.default_prefetch) as consumer:
            # When a consumer at the default prefetch drains them
            sizes = takes(own_schema, queue, consumer, 0.06)
    # Then after its first 16 it takes one at a time: no task waits behind another
    assert sizes == [16] + [1] * 8, sizes


def test_a_prefetch_the_user_set_is_taken_as_it_is(own_schema: str) -> None:
    # Given 40 tasks, a budget no task fits in, and a consumer whose prefetch the user set
    uri = f"pgsql://{HOST}/{DATABASE}?recovery_seconds=600&schema={own_schema}&window_budget=0.001"
    with open_transport(uri) as transport:
        queue = unique_queue()
        transport.submit_tasks(queue, [{"n": n} for n in range(40)])
        with transport.consumer(queue, prefetch=10) as consumer:
            # When it drains them, each task taking longer than the budget
            sizes = takes(own_schema, queue, consumer, 0.005)
    # Then every RESERVE takes 10
    assert sizes == [10, 10, 10, 10], sizes
