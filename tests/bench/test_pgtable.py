"""bench.pgtable's churn: the tasks pass through the queue the churned round measures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.plan import PGSQL, unavailable, unique_name


@pytest.fixture
def churn_schema() -> Iterator[tuple[str, str]]:
    """A pgsql schema of its own and a raw copy of its queue table; dropped after."""
    if (why := unavailable("pgsql")) is not None:
        pytest.skip(why)
    import psycopg

    from asynctask_pgsql.transport import PgsqlTransport
    from bench.raw import PgRaw, pg_conninfo

    schema = unique_name("asynctask_test_churn")
    transport = PgsqlTransport(f"{PGSQL}?schema={schema}&vacuum_every=0")
    transport.submit_task("made", {})  # the schema's tables are made on first use
    transport.purge("made")
    raw = PgRaw(unique_name("bench_raw_test_churn"))
    raw.create()
    try:
        yield schema, raw.target
    finally:
        transport.close()
        raw.destroy()
        with psycopg.connect(pg_conninfo(), autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_the_churn_passes_through_the_measured_queue(churn_schema):
    import psycopg

    from bench import pgtable
    from bench.raw import pg_conninfo

    # Given a schema's tables, a raw table, and the queue the churned round will measure
    schema, raw_table = churn_schema
    queue = unique_name("bench_table")
    with psycopg.connect(pg_conninfo(), autocommit=True) as conn:
        # When 300 tasks are churned through them
        pgtable.churn(conn, schema, raw_table, 300, queue)

        # Then their statuses are the measured queue's (every index leads with the queue
        # name: another queue's dead entries would sit outside the measured scans), all
        # succeeded, and no task is left in either table
        states = conn.execute(
            f"SELECT queue_name, state, count(*) FROM {schema}.asynctask_status"
            " GROUP BY queue_name, state"
        ).fetchall()
        assert states == [(queue, "succeeded", 300)]
        assert conn.execute(f"SELECT count(*) FROM {schema}.asynctask_queue").fetchone() == (0,)
        assert conn.execute(f"SELECT count(*) FROM {raw_table}").fetchone() == (0,)
