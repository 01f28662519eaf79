"""``python -m bench.forgetcost``: what deleting forgotten statuses costs a pgsql drain.

On a PostgreSQL of its own (``chaos.private_postgres``), one consumer in this process
drains a filled queue (``reserve``, ``start``, ``ack``, prefetch 16) with tracking on,
in alternating pairs (ABBA): ``after``, the consumer deleting statuses past their time
every ``FORGET_EVERY`` tasks it finished (``asynctask_pgsql.forget``), against
``before``, the sweep alone (``FORGET_EVERY`` set out of reach for that drain). The
status table is emptied before each drain, so that neither side deletes the other's
rows. ``--ttl`` (seconds; 0.001 by default: every status may be forgotten as soon as it
is final, the harshest case) is the transport's ``status_ttl``.

Example: ``python -m bench.forgetcost --tasks 10000 --rounds 10``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import psycopg

import asynctask_pgsql.consumer as consumer_module
from asynctask.testing import unique_queue
from asynctask.testing.contract import open_transport
from asynctask.transport import Transport
from chaos.private_postgres import PrivatePostgres, private_postgres


def drain(server: PrivatePostgres, transport: Transport, tasks: int, forgets: bool) -> float:
    """Tasks/s of one drain of ``tasks``, deleting forgotten statuses or not."""
    # The switch of this measurement only: the sweep alone, as before forget.py (the
    # consumer module's own name for the constant, which it imported).
    names = vars(consumer_module)
    real = names["FORGET_EVERY"]
    names["FORGET_EVERY"] = real if forgets else 10**9
    try:
        with psycopg.connect(server.conninfo, autocommit=True) as conn:
            conn.execute("TRUNCATE asynctask.asynctask_status")
            conn.execute("VACUUM asynctask.asynctask_status")
        queue = unique_queue("forget")
        for start in range(0, tasks, 1000):
            transport.submit_tasks(queue, [{}] * min(1000, tasks - start))
        began = time.perf_counter()
        with transport.consumer(queue, prefetch=16) as consumer:
            for _ in range(tasks):
                delivery = consumer.reserve(timeout=5)
                assert delivery is not None, "the queue ran dry"
                assert consumer.start(delivery) == "run"
                consumer.ack(delivery)
        return tasks / (time.perf_counter() - began)
    finally:
        names["FORGET_EVERY"] = real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--ttl", type=float, default=0.001)
    args = parser.parse_args()
    rates: dict[bool, list[float]] = {False: [], True: []}
    with private_postgres() as server:
        transport = open_transport(server.uri(recovery_seconds="5"))
        transport.status_ttl = args.ttl
        transport.submit_task("forget_schema", {})  # creates the schema
        transport.purge("forget_schema")
        for n in range(args.rounds):
            for forgets in (False, True) if n % 2 == 0 else (True, False):
                rates[forgets].append(drain(server, transport, args.tasks, forgets))
        transport.close()
    for forgets, name in ((False, "before (sweep alone)"), (True, "after (forget.py)")):
        shown = " ".join(f"{rate:.0f}" for rate in rates[forgets])
        print(f"{name}: median {statistics.median(rates[forgets]):.0f}/s ({shown})")
    ratio = statistics.median(rates[True]) / statistics.median(rates[False])
    print(f"after/before {ratio:.3f}")


if __name__ == "__main__":
    main()
