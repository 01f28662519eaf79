"""Liveness through faults on PostgreSQL, with ``asynctask workers`` children.

The connections killed are only this test's own (its ``application_name``); the schema is
one of its own (see ``test_liveness.SCHEMA``). The restart test restarts a PostgreSQL of
its own (``own_postgres``), never the shared server.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import psycopg

from asynctask import get_transport
from asynctask.liveness import new_owner
from asynctask_pgsql.schema import channel
from chaos.private_postgres import PrivatePostgres
from support import events, wait_for

from .conftest import CONNINFO, DATABASE, HOST
from .test_liveness import SCHEMA


def _uri(app: str) -> str:
    return f"pgsql://{HOST}/{DATABASE}?recovery_seconds=2&schema={SCHEMA}&application_name={app}"


def _terminate(app: str) -> int:
    with psycopg.connect(CONNINFO, autocommit=True) as conn:
        [(killed,)] = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = %s AND pid <> pg_backend_pid()",
            (app,),
        ).fetchall()
    return int(killed)


def test_gil_holding_tasks_keep_their_leases_when_every_connection_is_killed(
    pg_server: None, queue: str, ledger: Path, start_workers
):
    # Given two tasks that hold the GIL for 6 s (3x the bound), a third child idle beside
    app = f"liveness_{uuid.uuid4().hex[:8]}"
    uri = _uri(app)
    transport = get_transport(uri)
    transport.submit_tasks(queue, [{"ledger": str(ledger), "n": n, "seconds": 6} for n in (1, 2)])
    workers = start_workers(
        uri, {queue: {"worker": "test_gil_hog", "concurrency": 3}}, "--halt-when-empty"
    )
    wait_for(lambda: len(events(ledger, "start")) == 2, 30, "both tasks to start")
    # When every connection of the workers (children and supervisor) is terminated, twice
    killed = 0
    for _ in range(2):
        killed += _terminate(app)
        time.sleep(1.0)
    assert killed >= 3
    # Then each task started once and finished once, and the command halts with 0
    assert workers.wait(60) == 0, workers.output()
    assert sorted(e["payload"]["n"] for e in events(ledger, "start")) == [1, 2]
    assert sorted(e["payload"]["n"] for e in events(ledger, "done")) == [1, 2]


def test_a_server_restart_within_the_bound_costs_no_lease(
    own_postgres: PrivatePostgres, queue: str, ledger: Path, start_workers
):
    """Fails if a restart lets a live worker's task go to a rival (checked against a
    keeper that stopped beating after a beat failed while the server was away: the idle
    child took a task still running, which started twice)."""
    # Given a PostgreSQL of our own, a recovery bound of 2 s, and two tasks that hold the
    # GIL for 6 s (3x the bound) with a third child idle beside them
    uri = own_postgres.uri(recovery_seconds="2", retry_timeout="30")
    transport = get_transport(uri)
    transport.submit_tasks(queue, [{"ledger": str(ledger), "n": n, "seconds": 6} for n in (1, 2)])
    workers = start_workers(
        uri, {queue: {"worker": "test_gil_hog", "concurrency": 3}}, "--halt-when-empty"
    )
    wait_for(lambda: len(events(ledger, "start")) == 2, 60, "both tasks to start")
    # When the server stops (every connection cut) and is back within the bound
    began = time.monotonic()
    own_postgres.restart(down=0.5)
    down = time.monotonic() - began
    # Then the workers reconnect and keep their leases: each task started once, finished
    # once, settled (nothing left in flight, nothing failed), and the command halts with 0
    assert workers.wait(90) == 0, workers.output()
    assert sorted(e["payload"]["n"] for e in events(ledger, "start")) == [1, 2], (
        f"down {down:.1f} s"
    )
    assert sorted(e["payload"]["n"] for e in events(ledger, "done")) == [1, 2]
    stats = transport.queue_stats(queue)
    assert (stats.ready, stats.in_flight, stats.failed) == (0, 0, 0), stats
    transport.close()


def test_a_notify_flood_on_a_busy_worker_starts_nothing_twice(
    pg_server: None, queue: str, ledger: Path, start_workers
):
    # Given a task that holds the GIL for 6 s (its child reads nothing from its LISTEN
    # socket meanwhile), a rival child waiting on the queue
    app = f"liveness_{uuid.uuid4().hex[:8]}"
    uri = _uri(app)
    transport = get_transport(uri)
    transport.submit_task(queue, {"ledger": str(ledger), "n": 1, "seconds": 6})
    workers = start_workers(
        uri, {queue: {"worker": "test_gil_hog", "concurrency": 2}}, "--halt-when-empty"
    )
    wait_for(lambda: events(ledger, "start"), 30, "the task to start")
    # When 50,000 notifications are sent on the queue's channel meanwhile
    name = channel(SCHEMA, queue)

    def flood() -> None:
        with psycopg.connect(CONNINFO, autocommit=True) as conn:
            for _ in range(50):
                conn.execute(
                    "SELECT count(pg_notify(%s, repeat('x', 100) || g)) FROM generate_series(1, 1000) g",
                    (name,),
                )

    flooder = threading.Thread(target=flood)
    flooder.start()
    flooder.join(60)
    # Then the task started once and finished once
    assert workers.wait(60) == 0, workers.output()
    assert len(events(ledger, "start")) == 1
    assert len(events(ledger, "done")) == 1


def test_a_reconnecting_consumer_leaves_its_siblings_tasks_alone(pg_server: None, queue: str):
    # Given two consumers of one owner in one process (a child running tasks in threads),
    # each holding a task
    app = f"liveness_{uuid.uuid4().hex[:8]}"
    transport = get_transport(_uri(app))
    transport.submit_tasks(queue, [{"n": 1}, {"n": 2}])
    owner = new_owner()
    liveness = transport.liveness(queue, owner)
    liveness.beat()
    first = transport.consumer(queue, owner=owner)
    second = transport.consumer(queue, owner=owner)
    mine, theirs = first.reserve(timeout=5), second.reserve(timeout=5)
    assert mine is not None and theirs is not None
    # When the first one's connection is terminated and it reconnects
    with psycopg.connect(CONNINFO, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (first._conn.info.backend_pid,))
    first.ack(mine)
    assert first.reserve(timeout=0.2) is None
    # Then the second one's task is still its own (no rival gets it), and it settles it
    rival = get_transport(_uri(app + "r"))
    with rival.consumer(queue) as other:
        liveness.beat()
        assert other.reserve(timeout=0.5) is None
    second.ack(theirs)
    first.close()
    second.close()
    assert transport.queue_stats(queue).in_flight == 0
    assert transport.queue_stats(queue).ready == 0
    liveness.end(set())
