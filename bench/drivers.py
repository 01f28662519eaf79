"""``python -m bench.drivers``: our own code beside the driver's way, in the same run.

Where asynctask does by hand what the driver offers (a text array literal instead of
psycopg's list adaptation, a pool check on error instead of psycopg_pool's ``check=``,
a RESP packer and an idle-connection stack instead of redis-py's client, pipelines and
``Script``), this measures both ways, alternating rounds, best of each kept, and prints
calls per second. The comments in the code that keep our way quote these numbers.

Example: python -m bench.drivers --rounds 3 --count 3000
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from bench.plan import PGSQL, REDIS, unique_name

Step = Callable[[], None]


def best_rate(ways: dict[str, Step], count: int, rounds: int) -> dict[str, float]:
    """Calls per second of each way: ``rounds`` alternating rounds of ``count`` calls."""
    best = dict.fromkeys(ways, 0.0)
    for _ in range(rounds):
        for name, step in ways.items():
            start = time.perf_counter()
            for _ in range(count):
                step()
            best[name] = max(best[name], count / (time.perf_counter() - start))
    return best


def pgsql_ways() -> dict[str, dict[str, Step]]:
    """The consumer's reserve statement with arrays bound as lists or as text; a pooled
    call with and without psycopg_pool's ``check=``."""
    import psycopg_pool

    from asynctask_pgsql.transport import PgsqlTransport

    transport = PgsqlTransport(PGSQL)
    transport.queue_stats("bench_warm")  # migrate, open the pool
    conn = transport.server.connect()
    sql = transport.sql.reserve_tracked
    queue = unique_name("bench_drv")

    def listed() -> None:
        params = {
            "queue": queue,
            "limit": 1,
            "owner": 7,
            "keeper": None,
            "owners": [7],
            "acks": [12345],
            "floor": None,
        }
        conn.execute(sql, params, prepare=True).fetchall()

    def literal() -> None:
        params = {
            "queue": queue,
            "limit": 1,
            "owner": 7,
            "keeper": None,
            "owners": "{7}",
            "acks": "{12345}",
            "floor": None,
        }
        conn.execute(sql, params, prepare=True).fetchall()

    checked = psycopg_pool.ConnectionPool(
        transport.server.conninfo,
        kwargs={"autocommit": True},
        min_size=1,
        max_size=1,
        check=psycopg_pool.ConnectionPool.check_connection,
    )
    unchecked = psycopg_pool.ConnectionPool(
        transport.server.conninfo, kwargs={"autocommit": True}, min_size=1, max_size=1
    )
    checked.wait()
    unchecked.wait()

    def pooled(pool: psycopg_pool.ConnectionPool) -> Step:
        def step() -> None:
            with pool.connection() as c:
                c.execute("SELECT 1").fetchall()

        return step

    return {
        "pgsql arrays": {"psycopg list adaptation": listed, "text literal": literal},
        "pgsql pool": {
            "pool check= (driver)": pooled(checked),
            "no check (ours: pool.check() after an error)": pooled(unchecked),
        },
    }


def redis_ways() -> dict[str, dict[str, Step]]:
    """One command, a 3-command pipeline and a script: our packer on a held connection,
    against redis-py's client (pool checkout per call), pipeline and Script."""
    import redis

    from asynctask_redis.connection import call, pipeline, run
    from asynctask_redis.scripts import Script

    client = redis.Redis.from_url(REDIS)
    pool = redis.ConnectionPool.from_url(REDIS)
    held = pool.get_connection()
    key = unique_name("bench_drv")
    ours_script = Script("noop", "return #ARGV")
    theirs_script = client.register_script("return #ARGV")

    def our_call() -> None:
        call(held, "LLEN", key)

    def their_call() -> None:
        client.llen(key)

    def our_checkout() -> None:  # what the transport's idle stack saves: get + release
        conn = pool.get_connection()
        call(conn, "LLEN", key)
        pool.release(conn)

    commands = [
        ("LREM", key, 1, "x"),
        ("LMOVE", key, key + "p", "LEFT", "RIGHT"),
        ("SADD", key + "c", "1"),
    ]

    def our_pipeline() -> None:
        pipeline(held, commands)

    def their_pipeline() -> None:
        pipe = client.pipeline(transaction=False)
        pipe.lrem(key, 1, "x")
        pipe.lmove(key, key + "p", "LEFT", "RIGHT")
        pipe.sadd(key + "c", "1")
        pipe.execute()

    def our_script() -> None:
        run(held, ours_script, "a", "b", "c")

    def their_script() -> None:
        theirs_script(args=["a", "b", "c"])

    return {
        "redis command": {
            "redis-py client": their_call,
            "ours, pool checkout per call": our_checkout,
            "ours, held connection (idle stack)": our_call,
        },
        "redis pipeline": {"redis-py pipeline": their_pipeline, "ours (RESP packer)": our_pipeline},
        "redis script": {"redis-py Script": their_script, "ours (EVALSHA packer)": our_script},
    }


def main(argv: list[str]) -> int:
    """Print calls/s of every way; 0 always (a missing server is reported and skipped)."""
    parser = argparse.ArgumentParser(prog="python -m bench.drivers", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=3000)
    args = parser.parse_args(argv)
    for maker in (pgsql_ways, redis_ways):
        try:
            groups = maker()
        except Exception as exc:
            print(f"{maker.__name__}: skipped ({type(exc).__name__}: {exc})")
            continue
        for group, ways in groups.items():
            rates = best_rate(ways, args.count, args.rounds)
            first = next(iter(rates.values()))
            for name, rate in rates.items():
                print(f"{group:16} {name:45} {rate:9,.0f}/s  {rate / first:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
