"""Where and with what a run was made: the machine, the packages, the servers, the commit."""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

DISTRIBUTIONS = (
    "asynctask-core",
    "asynctask-filesys",
    "asynctask-pgsql",
    "asynctask-redis",
    "asynctask-amqp",
    "redis",
    "psycopg",
    "kombu",
    "amqp",
    "inotify-simple",
)


def _first(path: str, prefix: str) -> str | None:
    with contextlib.suppress(OSError), open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    return None


def machine() -> dict[str, Any]:
    """CPU, cores, memory, OS and Python of this machine."""
    memory = _first("/proc/meminfo", "MemTotal")
    if memory and memory.endswith(" kB"):
        memory = f"{int(memory[:-3]) / 2**20:.0f} GB"
    return {
        "cpu": _first("/proc/cpuinfo", "model name") or platform.processor() or "?",
        "cores": os.cpu_count(),
        "memory": memory,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "filesystem": _filesystem(),
        "load": load(),
    }


def load() -> str:
    """The load averages over 1, 5 and 15 minutes (other work disturbs the numbers)."""
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _filesystem() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["df", "-T", "/tmp"], capture_output=True, text=True, timeout=5
        ).stdout.splitlines()
        if len(out) > 1:
            return f"/tmp on {out[1].split()[1]}"
    return "?"


def packages() -> dict[str, str]:
    """Versions of our distributions and the drivers."""
    versions = {}
    for name in DISTRIBUTIONS:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def servers() -> dict[str, str]:
    """Versions of the servers that answer."""
    found = {}
    with contextlib.suppress(Exception):
        from bench.raw import redis_client

        client = redis_client()
        found["Redis"] = str(client.info("server")["redis_version"])
        client.close()
    with contextlib.suppress(Exception):
        import psycopg

        from bench.raw import pg_conninfo

        with psycopg.connect(pg_conninfo(), connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            found["PostgreSQL"] = str(row[0]) if row else "?"
    with contextlib.suppress(Exception):
        from bench.raw import amqp_connection

        with amqp_connection() as conn:
            conn.connect()
            found["RabbitMQ"] = str(conn.connection.server_properties.get("version", "?"))
    return found


def commit(root: Path) -> str:
    """The git commit of the working tree, marked when it has uncommitted changes."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    return "?"
