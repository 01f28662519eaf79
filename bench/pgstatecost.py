"""``python -m bench.pgstatecost``: what an AMQP drain with statuses in PostgreSQL sends
it, per task and by process, counted on a private server.

Issue 16's tracking row for AMQP with ``asynctask_state=postgresql://...`` read 0.23x.
Wall clock on 2 shared cores says little; this counts what load does not move. It
starts a PostgreSQL of its own (``chaos.private_postgres``) with pg_stat_statements and
every statement logged with its session's application name (a status feed's names its
process), then for each tree given runs ``bench/drain_cpu.py amqp`` (1 child, the
no-op worker, statuses in that server) and reports, per task of the drain:

- statements by who sent them (the worker child's feed, its relay's feed, the pools):
  each one round trip, the worker's waited for before it goes on;
- per statement kind (pg_stat_statements): calls, execution time, buffers, WAL bytes;
- the child's and the relay's CPU (``drain_cpu``'s figures).

Trees run alternately (A B B A ...), each with its own interpreter (``<tree>/.venv``)::

    .venv/bin/python -m bench.pgstatecost --tree /tmp/base --tree . --rounds 2
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from chaos.private_postgres import PrivatePostgres

#: what the server is set to before the runs (then restarted)
SETTINGS = {
    "shared_preload_libraries": "pg_stat_statements",
    "log_statement": "all",
    "log_connections": "on",
    "log_line_prefix": "%a|%p|",
}

_LINE = re.compile(r"^(?P<app>[^|]*)\|(?P<pid>\d+)\|(?:LOG|ERROR):\s+(?P<what>.*)$")


def _configure(server: PrivatePostgres) -> None:
    import psycopg

    with psycopg.connect(server.conninfo.replace("dbname=test", "dbname=postgres")) as conn:
        conn.autocommit = True
        for name, value in SETTINGS.items():
            conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
    server.restart()
    with psycopg.connect(server.conninfo, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")


def _statements(server: PrivatePostgres) -> list[dict[str, Any]]:
    import psycopg

    query = """
        SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 70), calls, total_exec_time,
               shared_blks_hit + shared_blks_read, shared_blks_dirtied, wal_bytes, rows
        FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database
                                              WHERE datname = 'test')
        ORDER BY calls DESC"""
    with psycopg.connect(server.conninfo, autocommit=True) as conn:
        rows = conn.execute(query).fetchall()
    keys = ("query", "calls", "exec_ms", "buffers", "dirtied", "wal_bytes", "rows")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def _reset(server: PrivatePostgres) -> None:
    import psycopg

    with psycopg.connect(server.conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_statements_reset()")


def _by_sender(log: str, roles: dict[int, str]) -> dict[str, collections.Counter[str]]:
    """Statements of the log by application (a feed's pid mapped to its role)."""
    found: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in log.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        what = match["what"]
        if what.startswith("statement: "):
            kind = what[11:40]
        elif what.startswith("execute "):
            kind = what.split(":", 1)[0]
        else:
            continue
        app = match["app"]
        feed = re.search(r"status feed (\d+)$", app)
        if feed is not None:
            app = roles.get(int(feed[1]), app)
        found[app][kind] += 1
    return found


def run(server: PrivatePostgres, tree: Path, tasks: int) -> dict[str, Any]:
    """One drain by ``tree``'s interpreter; its counts per task."""
    schema = f"asynctask_cost_{uuid.uuid4().hex[:8]}"
    state = server.uri(schema=schema)
    python = tree / ".venv" / "bin" / "python"
    # the fill (its submits' status rows) first, then the counts of the drain alone:
    # drain_cpu fills and drains in one call, so its statements are read by kind
    _reset(server)
    start = server.log.stat().st_size if server.log.exists() else 0
    out = subprocess.run(
        [str(python), str(tree / "bench" / "drain_cpu.py"), "--tree", str(tree), "amqp",
         "--children", "1", "--tasks", str(tasks), "--state", state, "--json"],
        capture_output=True, text=True, timeout=900, check=True,
    )  # fmt: skip
    cpu = json.loads(out.stdout.strip().splitlines()[-1])
    with open(server.log, encoding="utf-8", errors="replace") as file:
        file.seek(start)
        log = file.read()
    roles: dict[int, str] = {}
    for key in cpu:
        if key.startswith("child "):
            roles[int(key.split()[1])] = "worker child feed"
        elif key.startswith("relay "):
            roles[int(key.split()[1])] = "relay feed"
    senders = _by_sender(log, roles)
    n = cpu["tasks"]
    return {
        "tree": str(tree),
        "tasks": n,
        "rate": cpu["rate"],
        "load": cpu["load"],
        "cpu": {k: v["cpu_us"] for k, v in cpu.items() if isinstance(v, dict)},
        "senders": {
            app: {kind: round(count / n, 3) for kind, count in kinds.most_common()}
            for app, kinds in senders.items()
        },
        "statements": [
            {
                "query": row["query"],
                "calls_per_task": round(row["calls"] / n, 3),
                "exec_us_per_task": round(row["exec_ms"] * 1000 / n, 1),
                "exec_us_per_call": round(row["exec_ms"] * 1000 / max(1, row["calls"]), 1),
                "buffers_per_task": round(row["buffers"] / n, 2),
                "wal_bytes_per_task": round(float(row["wal_bytes"]) / n, 1),
            }
            for row in _statements(server)
            if row["calls"] >= n // 100
        ],
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tree", type=Path, action="append", required=True)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=1, help="ABBA rounds of the trees")
    args = parser.parse_args(argv)
    trees = [t.resolve() for t in args.tree]
    server = PrivatePostgres()
    try:
        server.create()
        _configure(server)
        for r in range(args.rounds):
            for tree in trees if r % 2 == 0 else trees[::-1]:
                print(json.dumps(run(server, tree, args.tasks), indent=1), flush=True)
    finally:
        server.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
