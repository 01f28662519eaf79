"""Liveness through faults on Redis: a server of the test's own (``appendonly yes``).

Real ``asynctask workers`` children hold the GIL in long tasks while every client
connection is dropped (``CLIENT KILL TYPE normal``) and the server restarts: the
supervisor keeps its children's liveness and reconnects, so no task starts twice.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import redis

from asynctask import get_transport
from asynctask.liveness import new_owner
from support import events, wait_for

from .test_redis import PASSWORD, start_server


def test_gil_holding_tasks_keep_their_leases_through_connection_kills_and_a_restart(
    tmp_path: Path, queue: str, ledger: Path, start_workers
):
    # Given a Redis of our own that keeps its data across a restart, a recovery bound
    # of 2 s, and two tasks that hold the GIL for 6 s, with a third child idle beside them
    server = start_server("--save", "", "--appendonly", "yes", "--dir", str(tmp_path))
    try:
        uri = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0?recovery_seconds=2&heartbeat_seconds=0.25"
        client = redis.Redis(port=server.port, password=PASSWORD)
        transport = get_transport(uri)
        transport.submit_tasks(
            queue, [{"ledger": str(ledger), "n": n, "seconds": 6} for n in (1, 2)]
        )
        workers = start_workers(
            uri, {queue: {"worker": "test_gil_hog", "concurrency": 3}}, "--halt-when-empty"
        )
        wait_for(lambda: len(events(ledger, "start")) == 2, 30, "both tasks to start")
        # When every client connection is dropped twice, then the server restarts, down
        # for longer than a liveness key lives
        for _ in range(2):
            client.execute_command("CLIENT", "KILL", "TYPE", "normal")
            time.sleep(1.0)
        client.close()
        server.stop()
        time.sleep(1.5)  # down longer than the owner keys' expiry (recovery_seconds / 2)
        server.start()
        # Then each task started once and finished once, and the command halts with 0
        assert workers.wait(60) == 0, workers.output()
        assert sorted(e["payload"]["n"] for e in events(ledger, "start")) == [1, 2]
        assert sorted(e["payload"]["n"] for e in events(ledger, "done")) == [1, 2]
        transport.close()
    finally:
        server.stop()


def test_an_owned_consumer_that_could_not_close_hands_back_once_redis_answers(
    tmp_path: Path, queue: str
):
    # Given a task held by a consumer whose owner's keeper beats (a live child)
    server = start_server("--save", "", "--appendonly", "yes", "--dir", str(tmp_path))
    try:
        uri = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0?recovery_seconds=2&retry_timeout=1"
        transport = get_transport(uri)
        transport.submit_task(queue, {"n": 1})
        owner = new_owner()
        liveness = transport.liveness(queue, owner)
        liveness.beat()
        stale = transport.consumer(queue, owner=owner)
        delivery = stale.reserve(timeout=5)
        assert delivery is not None
        # When Redis is away while that consumer closes (the run loop renews its consumer
        # after an outage), then comes back, and the owner lives on
        server.stop()
        stale.close()
        server.start()
        stop = threading.Event()

        def keep() -> None:  # the supervisor, beating all along
            while not stop.wait(liveness.interval):
                liveness.beat()

        liveness.beat()
        keeper = threading.Thread(target=keep)
        keeper.start()
        try:
            # Then the child's next consumer gets the task back, uncounted
            with transport.consumer(queue, owner=owner) as fresh:
                again = fresh.reserve(timeout=5)
                assert again is not None and (again.id, again.attempt) == (delivery.id, 1)
                fresh.ack(again)
        finally:
            stop.set()
            keeper.join()
        liveness.end(set())
        transport.close()
    finally:
        server.stop()
