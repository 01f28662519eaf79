"""Liveness through faults on Redis: a server of the test's own (``appendonly yes``).

Real ``asynctask workers`` children hold the GIL in long tasks while every client
connection is dropped (``CLIENT KILL TYPE normal``) and the server restarts: the
supervisor keeps its children's liveness and reconnects, so no task starts twice.
"""

from __future__ import annotations

import time
from pathlib import Path

import redis

from asynctask import get_transport
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
        # When every client connection is dropped twice, then the server restarts
        for _ in range(2):
            client.execute_command("CLIENT", "KILL", "TYPE", "normal")
            time.sleep(1.0)
        client.close()
        server.stop()
        server.start()
        # Then each task started once and finished once, and the command halts with 0
        assert workers.wait(60) == 0, workers.output()
        assert sorted(e["payload"]["n"] for e in events(ledger, "start")) == [1, 2]
        assert sorted(e["payload"]["n"] for e in events(ledger, "done")) == [1, 2]
        transport.close()
    finally:
        server.stop()
