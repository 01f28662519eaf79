"""What ``queues()`` and ``queue_stats()`` cost at depth: a bounded read, whatever the size.

An operator's dashboard (``asynctask queues``, the web plugin) and every Prometheus scrape
call them. Counted by the buffers the statements read (``EXPLAIN (ANALYZE, BUFFERS)``),
not timed: the machine is shared.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from asynctask.testing import unique_queue
from asynctask.testing.contract import open_transport
from asynctask_pgsql.statements import EXACT_UP_TO, Statements
from asynctask_web.app import create_app
from clitools import run_asynctask
from support import free_port, scrape, total, wait_for

from .conftest import CONNINFO, DATABASE, HOST

URI = f"pgsql://{HOST}/{DATABASE}?recovery_seconds=1&vacuum_every=0"

DEEP = 200_000
#: buffers the counts may read at any depth: the capped counts (about 300 buffers each at
#: ``EXACT_UP_TO``) and the sample (``SAMPLE_BLOCKS``), with room; reading every row of
#: the deep queue took 4,294 at 200,000 waiting
BOUND = 1_500


@pytest.fixture
def own_schema(pg_server: None) -> Any:
    """A schema of this test's own, dropped after it."""
    name = f"asynctask_t_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(CONNINFO, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def _fill(schema: str, queue: str, count: int) -> None:
    """``count`` ready tasks in ``queue``, written in one statement (no status rows:
    counts read only the queue table)."""
    with psycopg.connect(CONNINFO, autocommit=True) as conn:
        conn.execute(
            f"INSERT INTO {schema}.asynctask_queue (queue_name, payload)"
            " SELECT %s, jsonb_build_object('n', n) FROM generate_series(1, %s) AS n",
            (queue, count),
        )


def _buffers(query: str, params: Any) -> int:
    """Shared buffers (hit and read) one run of ``query`` touches."""
    with psycopg.connect(CONNINFO, autocommit=True) as conn:
        [(plan,)] = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query, params
        ).fetchall()
    top = plan[0]["Plan"]
    return int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"])


def test_counts_read_a_bounded_number_of_buffers_at_any_depth(own_schema):
    """``queues()`` and ``queue_stats()`` at 200,000 waiting read no more buffers than a
    bound set by the exact counts' cap, and give the small counts exactly and the deep
    one as an estimate, said so (``estimated``). Failed before: the counts read every
    waiting row's index entry (docs/benchmarks.md: 223.5 ms at 1,000,000 waiting
    against 0.8 ms at 100)."""
    statements = Statements.for_schema(own_schema)
    with open_transport(f"{URI}&schema={own_schema}") as transport:
        # Given a deep queue, beside a small one, with delayed, retrying and failed tasks
        deep, small = unique_queue("deep"), unique_queue("small")
        transport.submit_tasks(small, [{"n": n} for n in range(5)])
        transport.submit_task(deep, {"n": -1}, delay=600)
        with transport.consumer(deep) as consumer:
            transport.submit_tasks(deep, [{"n": -2}, {"n": -3}])
            for settle in ("retry", "fail"):
                delivery = consumer.reserve(timeout=5)
                assert delivery is not None
                if settle == "retry":
                    consumer.retry(delivery, delay=600, error="later")
                else:
                    consumer.fail(delivery, "boom")
        _fill(own_schema, deep, DEEP)
        # When the counts are read
        listed = {stats.name: stats for stats in transport.queues()}
        one = transport.queue_stats(deep)
        # Then neither statement read more than the bound
        # (the capped counts, then the sample that estimates those past the cap)
        sample = _buffers(statements.sample, ())
        used = {
            "queues": _buffers(statements.all_stats, ()) + sample,
            "queue_stats": _buffers(statements.stats, {"q": deep}) + sample,
        }
        assert max(used.values()) < BOUND, used
        # And the deep queue's ready count is an estimate, said so, near the truth
        for stats in (listed[deep], one):
            assert stats.estimated == ("ready",), stats
            assert stats.ready is not None and abs(stats.ready - DEEP) < DEEP * 0.1, stats
            assert (stats.delayed, stats.retrying, stats.in_flight, stats.failed) == (1, 1, 0, 1)
        # And the small queue's counts are exact, not said to be estimates
        assert (listed[small].ready, listed[small].estimated) == (5, ())


def test_asynctask_queues_marks_an_estimated_count(own_schema):
    """``asynctask queues`` shows an estimated count with a ``~`` and ``--json`` names it
    (``estimated``); an exact one is shown as it is. Failed before: nothing told the
    operator that a count above ``EXACT_UP_TO`` is an estimate."""
    uri = f"{URI}&schema={own_schema}"
    with open_transport(uri) as transport:
        # Given a queue deeper than the exact counts' cap, and a small one
        deep, small = unique_queue("deep"), unique_queue("small")
        transport.submit_task(small, {"n": 1})
        _fill(own_schema, deep, EXACT_UP_TO + 2_000)
    # When `asynctask queues` lists them, as a table and as JSON
    shown = run_asynctask("queues", uri=uri)
    listed = run_asynctask("queues", "--json", uri=uri)
    # Then the deep queue's ready count reads as an estimate, the small one's as exact
    assert shown.code == 0 and listed.code == 0, (shown.err, listed.err)
    rows = {line.split()[0]: line.split() for line in shown.out.splitlines()[1:] if line.strip()}
    assert rows[deep][1].startswith("~") and rows[small][1] == "1", shown.out
    names = {row["name"]: row for row in json.loads(listed.out)}
    assert names[deep]["estimated"] == ["ready"] and names[deep]["ready"] > EXACT_UP_TO
    assert names[small]["estimated"] == [] and names[small]["ready"] == 1


def test_the_web_dashboard_marks_an_estimated_count(own_schema):
    """The dashboard's queue list and queue page show an estimated count as ``~N``, and
    its JSON names it (``estimated``). Failed before: the page showed it plain."""
    with open_transport(f"{URI}&schema={own_schema}") as transport:
        # Given a queue deeper than the exact counts' cap, and a small one
        deep, small = unique_queue("deep"), unique_queue("small")
        transport.submit_task(small, {"n": 1})
        _fill(own_schema, deep, EXACT_UP_TO + 2_000)
        client = TestClient(create_app(transport), base_url="http://127.0.0.1:8080")
        # When the list, the deep queue's page and the JSON are read
        page = client.get("/").text
        detail = client.get(f"/queues/{deep}").text
        listed = {q["name"]: q for q in client.get("/api/queues").json()["queues"]}
    # Then the deep queue's ready count reads ~N, the small one's as it is
    ready = re.compile(
        r'<tr data-queue="([a-z0-9_]+)">.*?<td data-count="ready">([^<]*)</td>', re.S
    )
    cells = dict(ready.findall(page))
    assert cells[deep].startswith("~") and cells[small] == "1", cells
    assert re.search(r'<td data-count="ready">~\d+</td>', detail), detail
    assert listed[deep]["estimated"] == ["ready"] and listed[small]["estimated"] == []


def test_prometheus_marks_an_estimated_count(own_schema):
    """The workers' metrics say which queue count is an estimate:
    ``asynctask_queue_tasks_estimated{queue,state}`` is 1 beside an estimated
    ``asynctask_queue_tasks`` and 0 beside an exact one (a gauge of its own, not a label
    on the count: a count crossing ``EXACT_UP_TO`` keeps its series). Failed before: the
    scrape served the estimate as a plain count, and no series said so."""
    from asynctask_prometheus import server

    with open_transport(f"{URI}&schema={own_schema}") as transport:
        # Given a queue deeper than the exact counts' cap, and a small one
        deep, small = unique_queue("deep"), unique_queue("small")
        transport.submit_task(small, {"n": 1})
        _fill(own_schema, deep, EXACT_UP_TO + 2_000)
        # When the supervisor's endpoint is scraped
        port = free_port()
        stop = server.start(port, transport, [deep, small], addr="127.0.0.1")
        try:
            samples = wait_for(lambda: scrape(port), 10, "the metrics endpoint")
        finally:
            stop()
    # Then the deep queue's ready count is served, marked as an estimate; its other
    # counts and the small queue's are marked exact
    assert total(samples, "asynctask_queue_tasks", queue=deep, state="ready") > EXACT_UP_TO
    marked = {
        (dict(labels)["queue"], dict(labels)["state"]): value
        for (name, labels), value in samples.items()
        if name == "asynctask_queue_tasks_estimated"
    }
    assert marked[(deep, "ready")] == 1, marked
    assert marked[(deep, "failed")] == 0 and marked[(small, "ready")] == 0, marked
    counted = {
        (dict(labels)["queue"], dict(labels)["state"])
        for (name, labels) in samples
        if name == "asynctask_queue_tasks"
    }
    assert set(marked) == counted  # one mark beside every count served


def test_asynctask_top_marks_an_estimated_count(own_schema):
    """``asynctask top`` shows an estimated count as ``~N``, as ``asynctask queues`` does.
    Failed before: it showed the estimate plain."""
    from tests.observe.test_top import row, top_once

    uri = f"{URI}&schema={own_schema}"
    with open_transport(uri) as transport:
        # Given a queue deeper than the exact counts' cap, and a small one
        deep, small = unique_queue("deep"), unique_queue("small")
        transport.submit_task(small, {"n": 1})
        _fill(own_schema, deep, EXACT_UP_TO + 2_000)
    # When top prints one frame of the two
    shown = top_once(uri, "--queue", deep, "--queue", small)
    # Then the deep queue's ready count reads ~N, its other counts and the small one's plain
    assert shown.returncode == 0, shown.stderr
    assert re.fullmatch(r"~\d+", row(shown.stdout, deep)[1]), shown.stdout
    assert row(shown.stdout, deep)[2:5] == ["0", "0", "0"], shown.stdout
    assert row(shown.stdout, small)[1] == "1", shown.stdout
