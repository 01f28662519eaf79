"""Commands for people and scripts: submit, queues, purge, failed, plugins, settings, schedule."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import Annotated

import typer

from asynctask.cli.common import (
    ConfigOption,
    ImportOption,
    JsonOption,
    SetOption,
    count_text,
    fail,
    open_transport,
    reported_errors,
    shorten,
    table,
    use_settings,
)
from asynctask.settings import SETTINGS


def submit(
    queue: Annotated[str, typer.Argument(help="Queue name, e.g. emails.")],
    payload: Annotated[
        str | None,
        typer.Argument(
            help="A JSON object. Without it (or with -), one JSON object per line of stdin."
        ),
    ] = None,
    delay: Annotated[
        float, typer.Option("--delay", help="Seconds before the task may run.", min=0)
    ] = 0.0,
    expires: Annotated[
        float | None,
        typer.Option(
            "--expires", help="A task not started within S seconds never runs.", metavar="S"
        ),
    ] = None,
    unique_key: Annotated[
        str | None,
        typer.Option(
            "--unique-key",
            help="While a task with this key on this queue is not final, print its id "
            "instead of submitting (one payload only).",
            metavar="KEY",
        ),
    ] = None,
    priority: Annotated[
        int, typer.Option("--priority", help="0-9; a higher one is taken first.", min=0, max=9)
    ] = 0,
    sets: SetOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Submit tasks and print their ids.

    Example: asynctask submit emails '{"to": "ann@example.org"}' --priority 5
    """
    with reported_errors():
        if payload is None or payload == "-":
            texts = [line for line in sys.stdin.read().splitlines() if line.strip()]
        else:
            texts = [payload]
        payloads = []
        for number, text in enumerate(texts, 1):
            try:
                payloads.append(json.loads(text))
            except ValueError as exc:
                raise fail(f"payload #{number} is not JSON ({exc}): {text[:80]!r}", 2) from exc
        transport = open_transport(sets, config)
        ids = transport.submit_tasks(
            queue,
            payloads,
            delay=delay,
            expires=expires,
            unique_key=unique_key,
            priority=priority,
        )
    if as_json:
        typer.echo(json.dumps({"queue": queue, "ids": ids}, indent=2))
        return
    for task_id in ids:
        typer.echo(task_id)


def queues(
    sets: SetOption = None, config: ConfigOption = None, as_json: JsonOption = False
) -> None:
    """Show every queue holding a task, with its counts; empty queues are not listed.

    A task in any state counts: ready, delayed, retrying, in flight or failed. The same
    on every transport. A count marked ``~`` is an estimate (pgsql counts exactly up to
    10,000 per count; ``--json`` names them in ``estimated``).

    Example: asynctask queues --json
    """
    with reported_errors():
        stats = open_transport(sets, config).queues()
    if as_json:
        typer.echo(json.dumps([asdict(s) for s in stats], indent=2))
        return
    header = ["queue", "ready", "delayed", "retrying", "in_flight", "failed"]
    rows = [
        [s.name, *(count_text(getattr(s, h), h in s.estimated) for h in header[1:])] for s in stats
    ]
    typer.echo(table(rows, header) if rows else "No queues.")


def failed_list(
    queue: Annotated[str, typer.Argument(help="Queue name.")],
    limit: Annotated[int, typer.Option(help="At most this many.", min=1)] = 100,
    offset: Annotated[
        int,
        typer.Option(help="Skip this many first: --offset 100 is the second page of 100.", min=0),
    ] = 0,
    sets: SetOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """List a queue's failed tasks, oldest first, one page (--limit) at a time (--offset).

    Example: asynctask failed list emails --limit 100 --offset 100
    """
    with reported_errors():
        tasks = open_transport(sets, config).failed_tasks(queue, limit, offset)
    if as_json:
        typer.echo(json.dumps([asdict(t) for t in tasks], indent=2))
        return
    if not tasks:
        past = f" past the first {offset}" if offset else ""
        typer.echo(f"No failed tasks in {queue}{past}.")
        return
    rows = [
        [
            t.id,
            str(t.attempts),
            shorten(json.dumps(t.payload) if t.payload is not None else f"raw: {t.raw!r}"),
            shorten(t.error.strip().splitlines()[-1] if t.error.strip() else ""),
        ]
        for t in tasks
    ]
    typer.echo(table(rows, ["id", "attempts", "payload", "error"]))


def plugins(
    imports: ImportOption = None,
    sets: SetOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """List what you can use: transports (by URI scheme) and workers (by the name you put
    in asynctask_workers), with the distribution and entry point that provide each, and
    the plugins that failed to load, with their error.

    Example: asynctask plugins
    """
    from asynctask.cli.pluginlist import plugin_rows, plugin_warnings
    from asynctask.plugins import load_plugins

    with reported_errors():
        settings = use_settings(sets, config)
        registry = load_plugins([*settings.imports, *(imports or [])])
    rows = plugin_rows(registry)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    header = ["name", "kind", "distribution", "version", "entry point"]
    keys = ["name", "kind", "distribution", "version", "entry_point"]
    listed = [r for r in rows if r["kind"] != "broken"]
    typer.echo(table([[r[k] or "-" for k in keys] for r in listed], header))
    for line in plugin_warnings(rows):
        typer.echo(line, err=True)


def show_settings(
    sets: SetOption = None, config: ConfigOption = None, as_json: JsonOption = False
) -> None:
    """Show the effective settings and where each value came from (passwords hidden).

    Example: asynctask settings --set asynctask_workers_poll_interval=250
    """
    with reported_errors():
        settings = use_settings(sets, config)
    rows = []
    for name in SETTINGS:
        shown = settings.describe(name)
        if name == "asynctask_transport" and settings.values[name] is None:
            from asynctask.uri import redact

            shown = redact(settings.transport) + " (embedded default)"
        rows.append({"name": name, "value": shown, "source": settings.sources[name]})
    if as_json:
        values = []
        for row in rows:
            name = row["name"]
            value = settings.raw.get(name, settings.values[name])
            if name == "asynctask_transport":
                value = settings.transport  # the effective URI, the embedded default too
            values.append({**row, "value": json_value(value)})
        typer.echo(json.dumps(values, indent=2))
        return
    typer.echo(
        table([[r["name"], r["value"], r["source"]] for r in rows], ["setting", "value", "source"])
    )


def json_value(value: object) -> object:
    """A setting's value as a JSON value (not JSON text), any password hidden."""
    from asynctask.uri import redact

    if isinstance(value, str):
        return redact(value)
    text = json.dumps(value, default=str)
    try:
        return json.loads(redact(text))
    except ValueError:
        return redact(text)


def schedule(
    sets: SetOption = None, config: ConfigOption = None, as_json: JsonOption = False
) -> None:
    """List the entries of asynctask_scheduled_workers with their next fire times.

    Example: asynctask schedule --config /etc/asynctask.toml
    """
    from asynctask.scheduler import next_fire_times

    with reported_errors():
        rows = next_fire_times(use_settings(sets, config))
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        typer.echo("No schedules configured.")
        return
    cells = [
        [r["name"], str(r["runs"]), r["queue"], json.dumps(r["schedule"]), r["next"] or "never"]
        for r in rows
    ]
    typer.echo(table(cells, ["name", "runs", "queue", "schedule", "next"]))
