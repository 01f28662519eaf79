"""What a deep queue costs in memory: the server's, and an ``asynctask workers`` child's.

The server's, as each server tells it: Redis ``used_memory`` (INFO), the PostgreSQL
queue table's size with its indexes (``pg_total_relation_size``: the shared table, so
other work moves it a little), RabbitMQ's resident memory (``/proc`` of the broker's
``beam.smp`` on this machine), the filesys queue folder's bytes on disk. A worker
child's is its peak resident set (``VmHWM`` in ``/proc/PID/status``), read while it runs.
"""

from __future__ import annotations

import os
from pathlib import Path


def _redis() -> float:
    from bench.raw import redis_client

    client = redis_client()
    try:
        return float(client.info("memory")["used_memory"])
    finally:
        client.close()


def _pgsql() -> float:
    import psycopg

    from bench.raw import pg_conninfo

    with psycopg.connect(pg_conninfo()) as conn:
        row = conn.execute(
            "SELECT pg_total_relation_size(c.oid) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'asynctask' AND c.relname = 'asynctask_queue'"
        ).fetchone()
    return float(row[0]) if row else 0.0


def _amqp() -> float:
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == "beam.smp":
                total += rss(int(entry.name), "VmRSS")
        except OSError:
            continue
    return total


def _folder(path: Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue
    return float(total)


#: what each server's figure is, for the docs
WHAT = {
    "redis": "Redis used_memory",
    "pgsql": "queue table + indexes",
    "amqp": "RabbitMQ resident memory",
    "filesys": "queue folder on disk",
}


def server(name: str, folder: Path) -> float | None:
    """Bytes the server (or the folder) holds now; None where it cannot be read."""
    try:
        if name == "redis":
            return _redis()
        if name == "pgsql":
            return _pgsql()
        if name == "amqp":
            return _amqp() or None
        if name == "filesys":
            return _folder(folder)
    except Exception:
        return None
    return None


def rss(pid: int, field: str = "VmHWM") -> float:
    """A process's resident memory in bytes (``VmHWM``: its peak); 0 once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1]) * 1024
    return 0.0
