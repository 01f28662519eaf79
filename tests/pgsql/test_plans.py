"""The plans of the consumer's statements stay bounded whatever the planner believes.

A schema of the bench's own (``bench/measure.py``) on a server with autovacuum off is
never ANALYZEd: its statistics are whatever the transport's own VACUUM (``vacuum.py``)
left, and a VACUUM of a drained queue table that could not give its pages back leaves
``reltuples = 0`` over hundreds of pages: the planner then takes the table for empty at
any size. Counted by the plans' loops and rows, not timed.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from asynctask.testing import unique_queue
from asynctask.testing.contract import open_transport
from asynctask_pgsql.statements import Statements

from .conftest import CONNINFO, DATABASE, HOST

URI = f"pgsql://{HOST}/{DATABASE}?recovery_seconds=1&vacuum_every=0"


@pytest.fixture
def own_schema(pg_server: None) -> Any:
    """A schema of this test's own (its tables' statistics are this test's)."""
    name = f"asynctask_t_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(CONNINFO, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of an ``EXPLAIN (ANALYZE, FORMAT JSON)`` plan."""
    found = [plan]
    for child in plan.get("Plans", []):
        found += _nodes(child)
    return found


@pytest.mark.parametrize("tracked", [True, False])
def test_a_reserve_reads_the_head_not_the_queue_when_the_table_looks_empty(own_schema, tracked):
    """The RESERVE reads its head's rows, not the whole queue, when the queue table's
    statistics say it is empty (``reltuples = 0`` over its pages, as a VACUUM of a drained
    table leaves it). Failed before: its ``lapsed`` CTE (``DELETE ... USING head``) ran as
    a nested loop over every row of the queue's primary key, the head rescanned per row
    (2,000 loops here; at 100,000 waiting make bench's depth step read 261/s against
    20,000/s, 2026-12-07)."""
    statements = Statements.for_schema(own_schema)
    with open_transport(f"{URI}&schema={own_schema}") as transport:
        # Given a queue table drained, then vacuumed without giving its pages back
        queue = unique_queue("plans")
        transport.submit_tasks(queue, [{"n": n} for n in range(2000)])
        transport.purge(queue)
        with psycopg.connect(CONNINFO, autocommit=True) as conn:
            for table in ("asynctask_queue", "asynctask_status"):
                conn.execute(f"VACUUM (TRUNCATE false) {own_schema}.{table}")
            [(reltuples, relpages)] = conn.execute(
                "SELECT reltuples, relpages FROM pg_class WHERE oid = %s::regclass",
                (f"{own_schema}.asynctask_queue",),
            ).fetchall()
        assert reltuples == 0 and relpages > 0, (reltuples, relpages)
        # And 2,000 tasks waiting again
        transport.submit_tasks(queue, [{"n": n} for n in range(2000)])
        # When a reserve of 16 is planned and run (rolled back)
        text = statements.reserve_tracked if tracked else statements.reserve_untracked
        params = {
            "acks": "{}", "owners": "{}", "results": "[]", "started": "{}",
            "track": tracked, "ttl": 60.0, "queue": queue, "limit": 16,
            "owner": 0, "keeper": 0,
        }  # fmt: skip
        with (
            psycopg.connect(CONNINFO, autocommit=True) as conn,
            conn.transaction(force_rollback=True),
        ):
            [(plan,)] = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + text, params).fetchall()
        # Then no node runs more than once per head row, nor reads more than the head
        nodes = _nodes(plan[0]["Plan"])
        loops = [
            (n["Node Type"], n.get("Relation Name") or n.get("CTE Name"), n["Actual Loops"])
            for n in nodes
        ]
        assert [node for node in loops if node[2] > 16] == []
        read = [
            (n["Node Type"], n["Actual Rows"] * n["Actual Loops"])
            for n in nodes
            if n.get("Relation Name") in ("asynctask_queue", "asynctask_status")
        ]
        assert [node for node in read if node[1] > 32] == []
        transport.purge(queue)
