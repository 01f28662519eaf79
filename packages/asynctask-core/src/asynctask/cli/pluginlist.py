"""The rows of ``asynctask plugins``: what a user types, and what provides it.

A worker is listed by its ``name`` (what ``asynctask_workers`` takes), not by the name
of the entry point that registers it: ``thumbs = "app:Thumb"`` with ``Thumb.name =
"thumbnail"`` is listed as ``thumbnail``, and a warning says the two differ. A transport
is listed by its URI schemes. Plugins that failed to load are rows of kind ``broken``
with their error.
"""

from __future__ import annotations

from typing import Any

from asynctask.hookspecs import PROJECT
from asynctask.plugins import INTERNAL_WORKERS, WORKERS_GROUP, Registry


def plugin_rows(registry: Registry) -> list[dict[str, Any]]:
    """One row per transport, worker and broken plugin, for people and for --json."""
    infos = {(info.group, info.name): info for info in registry.plugins}
    rows: list[dict[str, Any]] = []
    for plugin in sorted({entry.plugin for entry in registry.transports.values()}):
        schemes = sorted(s for s, e in registry.transports.items() if e.plugin == plugin)
        info = infos.get((PROJECT, plugin))
        rows.append(
            _row(
                ", ".join(f"{s}:" for s in schemes),
                "transport",
                info.distribution if info else None,
                info.version if info else None,
                f"{plugin} = {info.value}" if info else plugin,
            )
        )
    for name, entry in sorted(registry.workers.items()):
        if entry.entry_point is not None:
            ep_name = entry.entry_point.split(" = ")[0]
            info = infos.get((WORKERS_GROUP, ep_name))
            where = entry.entry_point
        elif entry.source.startswith("plugin "):
            plugin = entry.source.split("'")[1]
            info = infos.get((PROJECT, plugin))
            where = f"{plugin} = {info.value}" if info else entry.source
        else:
            info, where = None, entry.source
        kind = "internal worker" if name in INTERNAL_WORKERS else "worker"
        rows.append(
            _row(
                name,
                kind,
                info.distribution if info else None,
                info.version if info else None,
                where,
            )
        )
    for broken in registry.broken:
        row = _row(
            broken.name,
            "broken",
            broken.distribution,
            broken.version,
            f"{broken.name} = {broken.value}",
        )
        row["error"] = broken.error
        rows.append(row)
    return rows


def _row(
    name: str, kind: str, distribution: str | None, version: str | None, entry_point: str
) -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,
        "distribution": distribution,
        "version": version,
        "entry_point": entry_point,
        "error": None,
    }


def plugin_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """Lines for stderr: entry points named unlike their worker, and broken plugins."""
    lines = []
    for row in rows:
        if row["kind"] == "worker" and " = " in row["entry_point"]:
            ep_name = row["entry_point"].split(" = ")[0]
            if ep_name != row["name"] and ":" in row["entry_point"]:
                lines.append(
                    f"warning: the entry point {ep_name!r} ({row['distribution']}) registers "
                    f"the worker {row['name']!r}: use {row['name']!r} in asynctask_workers"
                )
        if row["kind"] == "broken":
            lines.append(
                f"warning: plugin {row['name']!r} ({row['entry_point'].split(' = ')[1]}, from "
                f"{row['distribution']} {row['version']}) is disabled: {row['error']}"
            )
    return lines
