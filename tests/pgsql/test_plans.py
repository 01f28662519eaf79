"""The plans of the consumer's statements stay bounded whatever the planner believes.

A schema of the bench's own (``bench/measure.py``) on a server with autovacuum off is
never ANALYZEd: its statistics are whatever the transport's own VACUUM (``vacuum.py``)
left, and a VACUUM of a drained queue table that could not give its pages back leaves
``reltuples = 0`` over hundreds of pages: the planner then takes the table for empty at
any size. Counted by the plans' loops and rows, not timed.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from asynctask.testing import unique_queue
from asynctask.testing.contract import open_transport
from asynctask_pgsql.schema import consumer_lock_class, sweep_lock_class
from asynctask_pgsql.state_sql import StateStatements
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
            "owner": 0, "keeper": 0, "floor": None,
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


# -- every statement that joins a table to a CTE, on a table the planner takes for empty --

#: rows of the big queue and of the status history beside it
BIG = 100_000
#: the consumer numbers of the rows of the measured queue: ours (alive), a dead one
OURS, DEAD = 1001, 1002


def _prepared(text: str, params: dict[str, Any]) -> tuple[str, list[Any]]:
    """``text`` with its ``%(name)s`` as ``$n`` (for PREPARE) and the values in order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return re.sub(r"%\((\w+)\)[sb]", number, text), [params[name] for name in names]


def _explain(conn: psycopg.Connection[Any], text: str, params: dict[str, Any], mode: str) -> Any:
    """The ``EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)`` plan of ``text`` (run, rolled back)
    as a session of ``mode`` plans it: ``consumer`` (a consumer's session: generic plans,
    no hash or merge joins, ``statements.ENLIST``) or ``pool`` (the pool's sessions:
    the server's defaults, a plan for the values given)."""
    body, values = _prepared(text, params)
    with conn.transaction(force_rollback=True):
        if mode == "consumer":
            for name in ("enable_hashjoin", "enable_mergejoin"):
                conn.execute(f"SET LOCAL {name} = off")
            conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        name = f"p_{uuid.uuid4().hex[:8]}"
        conn.execute(f"PREPARE {name} AS {body}")
        try:
            arguments = pgsql.SQL(", ").join(pgsql.Literal(v) for v in values)
            query = pgsql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE {}({})").format(
                pgsql.Identifier(name), arguments
            )
            [(plan,)] = conn.execute(
                query if values else query.as_string(conn).replace("()", "")
            ).fetchall()
        finally:
            conn.execute(f"DEALLOCATE {name}")
    return plan


def _big_reads(plan: Any, bound: int) -> list[tuple[str, str, int, int]]:
    """The nodes of ``plan`` that read more than ``bound`` rows or buffers of the queue
    or status table (or their indexes): (node, relation or index, rows, buffers)."""
    found = []
    for node in _nodes(plan[0]["Plan"]):
        if node.get("Relation Name") not in ("asynctask_queue", "asynctask_status"):
            continue
        if node["Node Type"] == "ModifyTable":
            continue  # its buffers are those of the scans below and of the rows it wrote
        loops = node["Actual Loops"]
        rows = (node["Actual Rows"] + node.get("Rows Removed by Filter", 0)) * loops
        rows += node.get("Rows Removed by Index Recheck", 0) * loops
        buffers = node.get("Shared Hit Blocks", 0) + node.get("Shared Read Blocks", 0)
        if rows > bound or buffers > bound:
            where = node.get("Index Name") or node["Relation Name"]
            found.append((node["Node Type"], where, rows, buffers))
    return found


@pytest.fixture(scope="module")
def big_schema() -> Any:
    """A schema whose queue and status tables the planner takes for empty (a VACUUM of
    the drained tables that kept their pages: ``reltuples = 0``), then filled with
    ``BIG`` tasks waiting in another queue and ``BIG`` finished statuses kept for a day;
    the measured queue holds a few rows in each state. Yields (schema, queue, ids)."""
    try:
        psycopg.connect(CONNINFO, connect_timeout=3).close()
    except psycopg.Error as exc:
        pytest.skip(f"PostgreSQL is not reachable: {exc}")
    schema = f"asynctask_t_{uuid.uuid4().hex[:10]}"
    queue = unique_queue("plans")
    with open_transport(f"{URI}&schema={schema}") as transport:
        transport.submit_task(queue, {})
        transport.purge(queue)
    q, s = f"{schema}.asynctask_queue", f"{schema}.asynctask_status"
    try:
        with psycopg.connect(CONNINFO, autocommit=True) as conn:
            # Given tables drained and vacuumed with their pages kept: reltuples = 0
            conn.execute(
                f"INSERT INTO {s} (task_id, queue_name, state) SELECT gen_random_uuid(),"
                " 'gone', 'queued' FROM generate_series(1, 5000)"
            )
            conn.execute(
                f"INSERT INTO {q} (task_id, queue_name, payload) SELECT task_id, 'gone', '{{}}'"
                f" FROM {s}"
            )
            for table in (q, s):
                conn.execute(f"DELETE FROM {table}")
                conn.execute(f"VACUUM (TRUNCATE false) {table}")
            # And BIG tasks waiting in another queue, BIG finished statuses beside them
            conn.execute(
                f"INSERT INTO {s} (task_id, queue_name, state) SELECT gen_random_uuid(),"
                f" 'big', 'queued' FROM generate_series(1, {BIG})"
            )
            conn.execute(
                f"INSERT INTO {q} (task_id, queue_name, payload) SELECT task_id, 'big',"
                f" '{{\"n\": 1}}' FROM {s}"
            )
            conn.execute(
                f"INSERT INTO {s} (task_id, queue_name, state, date_finished, date_forget)"
                f" SELECT gen_random_uuid(), 'big', 'succeeded', now(), now() + interval '1 day'"
                f" FROM generate_series(1, {BIG})"
            )
            [(reltuples, relpages)] = conn.execute(
                "SELECT reltuples, relpages FROM pg_class WHERE oid = %s::regclass", (q,)
            ).fetchall()
            assert reltuples == 0 and relpages > 0, (reltuples, relpages)
            # And the measured queue: rows reserved by us, by a dead consumer, by a dead
            # keeper and by a live one, failed rows and waiting ones
            [(dead_keeper,)] = conn.execute(
                f"INSERT INTO {schema}.asynctask_owner (owner, date_beat)"
                " VALUES ('dead', now() - interval '1 hour') RETURNING id"
            ).fetchall()
            [(live_keeper,)] = conn.execute(
                f"INSERT INTO {schema}.asynctask_owner (owner) VALUES ('live') RETURNING id"
            ).fetchall()
            ids: dict[str, list[int]] = {}
            for kind, state, owner, keeper in [
                ("ours", "reserved", OURS, None),
                ("dead", "reserved", DEAD, None),
                ("dead_keeper", "reserved", DEAD, dead_keeper),
                ("live_keeper", "reserved", DEAD, live_keeper),
                ("failed", "failed", None, None),
                ("queued", "queued", None, None),
            ]:
                status = "running" if state == "reserved" else state
                rows = conn.execute(
                    f"WITH st AS (INSERT INTO {s} (task_id, queue_name, state)"
                    f" SELECT gen_random_uuid(), %s, %s FROM generate_series(1, 4)"
                    f" RETURNING task_id)"
                    f" INSERT INTO {q} (task_id, queue_name, payload, state, owner, keeper)"
                    f" SELECT task_id, %s, '{{}}', %s, %s, %s FROM st RETURNING id, task_id",
                    (queue, status, queue, state, owner, keeper),
                ).fetchall()
                ids[kind] = [row[0] for row in rows]
                ids[f"{kind}_tasks"] = [row[1] for row in rows]
        yield schema, queue, ids
    finally:
        with psycopg.connect(CONNINFO, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def _array(numbers: list[int]) -> str:
    return "{" + ",".join(str(n) for n in numbers) + "}"


def _consumer_params(ids: dict[str, list[int]], acks: list[int]) -> dict[str, Any]:
    """What ``PgsqlConsumer._bound`` adds to every statement of consumer ``OURS``."""
    return {
        "owner": OURS, "keeper": None, "owners": _array([OURS]), "acks": _array(acks),
        "results": json.dumps([None] * len(acks)), "started": _array([0] * len(acks)),
        "track": True, "ttl": 60.0,
    }  # fmt: skip


def _settle(ids: dict[str, list[int]], state: str, attempt: int, delay: float | None) -> Any:
    params = _consumer_params(ids, ids["ours"][1:2])
    params.update(ids=_array(ids["ours"][:1]), state=state, attempt=attempt, error="boom")
    params.update(delay=delay, started_at=None)
    return params


def _start_running(schema: str) -> str:
    """``START_RUNNING`` (a ``PREPARE`` of ``$n`` parameters) with ``%(pn)s`` of its types."""
    header, body = Statements.for_schema(schema).start_running.split(" AS\n", 1)
    types = header[header.index("(") + 1 : header.rindex(")")].split(", ")
    for n in range(len(types), 0, -1):
        body = body.replace(f"${n}", f"(%(p{n})s::{types[n - 1]})")
    return body


def _cases(schema: str, queue: str, ids: dict[str, list[int]]) -> dict[str, tuple[str, Any]]:
    """name -> (statement, parameters) of every statement that joins a big table to a CTE."""
    st, state = Statements.for_schema(schema), StateStatements.for_schema(schema)
    uuids = [str(u) for u in ids["ours_tasks"]]
    return {
        "start": (st.start, {**_consumer_params(ids, ids["ours"][1:2]), "id": ids["ours"][0]}),
        "start_running": (
            _start_running(schema),
            {
                "p1": "{" + ",".join(uuids[:2]) + "}", "p2": "{1,1}", "p3": _array([OURS]),
                "p4": _array(ids["ours"][2:3]), "p5": "[null]", "p6": 60.0, "p7": "{0}",
                "p8": "{1733600000.5,1733600000.25}",
            },
        ),
        "ack_retry": (st.settle, _settle(ids, "queued", 1, 1.0)),
        "ack_fail": (st.settle, _settle(ids, "failed", 1, None)),
        "ack_release": (st.settle, _settle(ids, "queued", 0, None)),
        "sweep": (
            st.sweep,
            {
                **_consumer_params(ids, []),
                "queue": queue,
                "lease": 10.0,
                "forget_limit": 1000,
                "lock_class": consumer_lock_class(schema),
                "sweep_class": sweep_lock_class(schema),
            },
        ),
        "orphans": (st.orphans, {"owner": OURS, "held": _array(ids["ours"][:1])}),
        "end_owner": (
            st.end_owner,
            {
                "owner_name": "live",
                "all": False,
                "started": "{" + uuids[0] + "}",
                "finished": "{}",
            },
        ),
        "take": (st.take, {"queue": queue, "limit": 1, "ttl": 60.0, "floor": None}),
        "purge": (st.purge.replace("%s", "%(queue)s"), {"queue": queue, "ttl": 60.0}),
        "purge_failed": (st.purge_failed, {"queue": queue, "all": True, "ids": "{}"}),
        "requeue_failed": (st.requeue_failed, {"queue": queue, "all": True, "ids": "{}"}),
        "cancel": (state.cancel, {"id": str(ids["queued_tasks"][0]), "ttl": 60.0}),
        "statuses": (state.statuses, {"ids": "{" + ",".join(uuids) + "}"}),
        "feed_writes": (
            state.feed_writes,
            {
                "rows": json.dumps([{"id": uuids[0], "state": "running", "attempts": 1,
                                     "ago": 0.5, "error": None, "result": None}]),
                "ttl": 60.0,
            },
        ),
    }  # fmt: skip


CASES = [
    "start", "start_running", "ack_retry", "ack_fail", "ack_release", "sweep", "orphans", "end_owner", "take",
    "purge", "purge_failed", "requeue_failed", "cancel", "statuses", "feed_writes",
]  # fmt: skip


@pytest.mark.parametrize("mode", ["consumer", "pool"])
@pytest.mark.parametrize("case", CASES)
def test_a_statement_reads_its_rows_not_the_table_when_the_table_looks_empty(
    big_schema, case, mode
):
    """Each statement that joins the queue or status table to a CTE of a few rows reads
    those rows (by an index or their ``ctid``), not the table, when the planner takes the
    table for empty (``reltuples = 0`` over its pages) and it holds 100,000 tasks and
    100,000 finished statuses: no node reads more than 50 rows or buffers of either, as a
    consumer's session plans it (generic plans, no hash or merge joins) and as a pooled
    session does (the server's defaults)."""
    schema, queue, ids = big_schema
    text, params = _cases(schema, queue, ids)[case]
    # When the statement is planned and run (rolled back)
    with psycopg.connect(CONNINFO, autocommit=True) as conn:
        plan = _explain(conn, text, params, mode)
    # Then it reads the few rows it names, not the 100,000 others
    found = _big_reads(plan, 50)
    assert not found, found


# -- the head of a queue whose table has not been vacuumed ------------------------------

#: tasks passed through the queue before the wake-up (no VACUUM since)
CHURNED = 20_000


def _churn(conn: psycopg.Connection[Any], schema: str, queue: str, tasks: int) -> None:
    """Pass ``tasks`` tasks through ``queue`` as workers would (``bench.pgtable.churn``):
    inserted with a status row, reserved, deleted; then read once from the head, as the
    first take after them does, which marks their index entries dead."""
    q, s = f"{schema}.asynctask_queue", f"{schema}.asynctask_status"
    conn.execute(
        f"WITH st AS (INSERT INTO {s} (task_id, queue_name, state) SELECT gen_random_uuid(),"
        f" %s, 'queued' FROM generate_series(1, {tasks}) RETURNING task_id)"
        f" INSERT INTO {q} (task_id, queue_name, payload) SELECT task_id, %s, '{{}}' FROM st",
        (queue, queue),
    )
    conn.execute(f"UPDATE {q} SET state = 'reserved', owner = 0 WHERE queue_name = %s", (queue,))
    conn.execute(f"DELETE FROM {q} WHERE queue_name = %s", (queue,))
    conn.execute(
        f"SELECT id FROM {q} WHERE queue_name = %s AND state = 'queued'"
        " ORDER BY date_available, id LIMIT 1",
        (queue,),
    )


def _index_reads(plans: list[str], index: str) -> list[int]:
    """The buffers each scan of ``index`` read, in the plans auto_explain logged."""
    reads = []
    for message in plans:
        _, _, text = message.partition("plan:")
        if not text.strip().startswith("{"):
            continue
        for node in _nodes(json.loads(text)["Plan"]):
            if node.get("Index Name") == index:
                reads.append(node["Shared Hit Blocks"] + node["Shared Read Blocks"])
    return reads


def test_a_woken_consumer_reads_the_head_past_the_tasks_taken_before(own_schema):
    """An idle consumer woken for one task reads the head of its queue from where the
    tasks taken before it ended, not over their dead index entries, on a table not
    vacuumed since 20,000 tasks passed (the churned rows of ``make bench``: 1,000,000
    tasks, 7,300 pages of ``asynctask_queue_ready`` a RESERVE and a NEXT_DUE, three scans
    a woken task; the raw loop's narrower primary key 2,800 pages, two scans). Read by
    auto_explain in the consumer's own session. Failed before (0f5c8d2^): every scan read
    the whole of the dead head (145 pages each, 8 scans)."""
    # (a sweep drops the floor: none within the test, whatever the load)
    uri = f"pgsql://{HOST}/{DATABASE}?recovery_seconds=600&vacuum_every=0&schema={own_schema}"
    with open_transport(uri) as transport:
        queue = unique_queue("churned")
        transport.submit_task(queue, {})
        transport.purge(queue)
        # Given CHURNED tasks passed through the queue, no VACUUM since
        with psycopg.connect(CONNINFO, autocommit=True) as conn:
            _churn(conn, own_schema, queue, CHURNED)
        with transport.consumer(queue) as consumer:
            # And an idle consumer that has looked (and found nothing), its look done to
            # the end: given 0.1 s, a loaded machine's first RESERVE (over the dead head)
            # outlasted it and the consumer returned before NEXT_DUE set its floor
            assert consumer.reserve(1.5) is None
            session = consumer._conn
            assert session is not None
            plans: list[str] = []
            session.add_notice_handler(lambda notice: plans.append(notice.message_primary))
            for setting in (
                "LOAD 'auto_explain'",
                "SET auto_explain.log_min_duration = 0",
                "SET auto_explain.log_analyze = on",
                "SET auto_explain.log_buffers = on",
                "SET auto_explain.log_format = json",
                "SET client_min_messages = log",
            ):
                session.execute(setting)
            # When a task is submitted, and again after it is done
            for n in range(2):
                transport.submit_task(queue, {"n": n})
                delivery = consumer.reserve(5)
                assert delivery is not None and delivery.payload == {"n": n}
                consumer.ack(delivery)
            assert consumer.reserve(0.1) is None
        # Then no scan of its head read more than a few pages of the index
        reads = _index_reads(plans, "asynctask_queue_ready")
        assert reads and max(reads) <= 10, reads
