"""The ``asynctask`` command: run workers, submit tasks, look at queues and failures.

Exit codes (also in the README):

====  ==========================================================
0     done: every worker halted, or stopped cleanly on a signal
1     an unexpected error
2     bad settings, a bad argument, or an unknown worker/transport
3     the backend could not be reached
4     stopped at once by a second signal (tasks in flight come back later)
====  ==========================================================
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from asynctask.errors import AsynctaskError, TransportUnavailable
from asynctask.logs import setup_logging
from asynctask.settings import SETTINGS, Settings, configure, load_settings

EXIT_UNAVAILABLE = 3

app = typer.Typer(
    name="asynctask",
    help="Background task queue: run workers, submit tasks, inspect queues and failures.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
failed_app = typer.Typer(
    help="The failed store: list, requeue or purge tasks whose retries are spent.",
    no_args_is_help=True,
)
app.add_typer(failed_app, name="failed")

T = TypeVar("T")

SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Set a setting: NAME=VALUE, VALUE is JSON or a plain string. "
        'Example: --set asynctask_workers=\'{"emails": "send_email"}\'',
        metavar="NAME=VALUE",
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Settings file (TOML) instead of ./asynctask.toml or $ASYNCTASK_CONFIG. "
        "Example: --config /etc/asynctask.toml",
        envvar="ASYNCTASK_CONFIG",
    ),
]
ImportOption = Annotated[
    list[str] | None,
    typer.Option(
        "--import",
        help="Import MODULE for the workers it defines. Example: --import myapp.workers",
        metavar="MODULE",
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")
]


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"asynctask: error: {message}", err=True)
    return typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn our errors into a message and an exit code (2 bad input, 3 unreachable)."""
    try:
        yield
    except TransportUnavailable as exc:
        raise _fail(str(exc), EXIT_UNAVAILABLE) from exc
    except AsynctaskError as exc:
        raise _fail(str(exc), 2) from exc


def _settings(sets: list[str] | None, config: Path | None) -> Settings:
    settings = load_settings(config=config, overrides=sets or [])
    configure(settings)
    return settings


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    return "\n".join(lines)


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


# -- workers ---------------------------------------------------------------------------


@app.command()
def workers(
    sets: SetOption = None,
    config: ConfigOption = None,
    imports: ImportOption = None,
    scheduler: Annotated[
        bool,
        typer.Option(
            "--scheduler", help="Also run the cron scheduler of asynctask_scheduled_workers."
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Log errors only.")] = False,
    halt_when_empty: Annotated[
        bool,
        typer.Option(
            "--halt-when-empty",
            "--halt_when_empty",
            help="Stop each worker once its queue has nothing ready, in back-off or in flight; "
            "exit 0 when all have.",
        ),
    ] = False,
    grace: Annotated[
        float,
        typer.Option(
            "--grace", help="Seconds children get to finish their task on SIGTERM.", min=0
        ),
    ] = 30.0,
) -> None:
    """Run one supervised child process per configured queue (and per scheduled queue).

    Example: asynctask workers --set asynctask_workers='{"emails": "send_email"}'
    """
    from asynctask.child import ChildSpec
    from asynctask.plugins import load_plugins
    from asynctask.supervisor import Supervisor

    setup_logging(quiet)
    log = logging.getLogger("asynctask.workers")
    with _errors():
        if scheduler and halt_when_empty:
            raise _fail(
                "--scheduler and --halt-when-empty do not go together: scheduled queues never halt",
                2,
            )
        settings = _settings(sets, config)
        registry = load_plugins([*settings.imports, *(imports or [])])
        settings.check_workers(registry.workers)
        specs: list[ChildSpec] = []
        for queue, worker_config in settings.workers.items():
            if worker_config is None:
                continue
            calls = worker_config.rate_max_calls
            per_child = None if calls is None else math.ceil(calls / worker_config.concurrency)
            for _ in range(worker_config.concurrency):
                specs.append(
                    ChildSpec(
                        queue=queue,
                        worker=worker_config.worker,
                        settings=settings.raw,
                        sources=settings.sources,
                        imports=list(imports or []),
                        parent_pid=os.getpid(),
                        halt_when_empty=halt_when_empty,
                        quiet=quiet,
                        rate_max_calls=per_child,
                        rate_period=worker_config.rate_period,
                        prefetch=worker_config.prefetch,
                    )
                )
        schedule_runner = None
        if settings.schedules:
            from asynctask.scheduler import scheduled_specs

            specs.extend(scheduled_specs(settings, list(imports or []), quiet))
            if scheduler:
                from asynctask.scheduler import ScheduleRunner

                schedule_runner = ScheduleRunner(settings, registry)
        elif scheduler:
            log.info("No schedules configured -- not starting scheduler")
    if not specs:
        log.info("No workers configured; terminating.")
        raise typer.Exit(0)
    with _errors():
        uri = settings.transport
        cls = registry.transport_class(uri)
        if not cls.features.multiprocess:
            raise _fail(
                f"the transport {uri!r} lives in one process only, but asynctask workers runs "
                "workers in child processes; set asynctask_transport to filesys:, pgsql:, "
                "redis:// or amqp://",
                2,
            )
        cls(uri).close()  # refuses bad options now, before any child starts
    supervisor = Supervisor(
        specs,
        check_interval=settings.check_child_interval,
        grace=grace,
        halt_when_empty=halt_when_empty,
        on_stop=None if schedule_runner is None else schedule_runner.stop,
    )
    if schedule_runner is not None:
        schedule_runner.start()
    try:
        code = supervisor.run()
    finally:
        if schedule_runner is not None:
            schedule_runner.stop()
    raise typer.Exit(code)


# -- submit and inspect ----------------------------------------------------------------


def _transport(sets: list[str] | None, config: Path | None) -> Any:
    from asynctask.api import get_transport

    _settings(sets, config)
    return get_transport()


@app.command()
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
    sets: SetOption = None,
    config: ConfigOption = None,
) -> None:
    """Submit tasks and print their ids.

    Example: asynctask submit emails '{"to": "ann@example.org"}'
    """
    with _errors():
        if payload is None or payload == "-":
            texts = [line for line in sys.stdin.read().splitlines() if line.strip()]
        else:
            texts = [payload]
        payloads = []
        for number, text in enumerate(texts, 1):
            try:
                payloads.append(json.loads(text))
            except ValueError as exc:
                raise _fail(f"payload #{number} is not JSON ({exc}): {text[:80]!r}", 2) from exc
        transport = _transport(sets, config)
        for task_id in transport.submit_tasks(queue, payloads, delay=delay):
            typer.echo(task_id)


@app.command()
def queues(
    sets: SetOption = None, config: ConfigOption = None, as_json: JsonOption = False
) -> None:
    """Show every queue with its counts (ready, delayed, retrying, in flight, failed).

    Example: asynctask queues --json
    """
    with _errors():
        stats = _transport(sets, config).queues()
    if as_json:
        typer.echo(json.dumps([asdict(s) for s in stats], indent=2))
        return
    header = ["queue", "ready", "delayed", "retrying", "in_flight", "failed"]
    rows = [[s.name, *(_count(getattr(s, h)) for h in header[1:])] for s in stats]
    typer.echo(_table(rows, header) if rows else "No queues.")


@app.command()
def purge(
    queue: Annotated[str, typer.Argument(help="Queue name.")],
    sets: SetOption = None,
    config: ConfigOption = None,
) -> None:
    """Delete every waiting task of a queue (not those in flight or failed).

    Example: asynctask purge emails
    """
    with _errors():
        count = _transport(sets, config).purge(queue)
    typer.echo(f"Purged {count} tasks from {queue}.")


@failed_app.command("list")
def failed_list(
    queue: Annotated[str, typer.Argument(help="Queue name.")],
    limit: Annotated[int, typer.Option(help="At most this many.", min=1)] = 100,
    sets: SetOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """List a queue's failed tasks, oldest first.

    Example: asynctask failed list emails
    """
    with _errors():
        tasks = _transport(sets, config).failed_tasks(queue, limit)
    if as_json:
        typer.echo(json.dumps([asdict(t) for t in tasks], indent=2))
        return
    if not tasks:
        typer.echo(f"No failed tasks in {queue}.")
        return
    rows = [
        [
            t.id,
            str(t.attempts),
            _short(json.dumps(t.payload) if t.payload is not None else f"raw: {t.raw!r}"),
            _short(t.error.strip().splitlines()[-1] if t.error.strip() else ""),
        ]
        for t in tasks
    ]
    typer.echo(_table(rows, ["id", "attempts", "payload", "error"]))


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


@failed_app.command("requeue")
def failed_requeue(
    queue: Annotated[str, typer.Argument(help="Queue name.")],
    ids: Annotated[list[str] | None, typer.Argument(help="Task ids; all when none.")] = None,
    sets: SetOption = None,
    config: ConfigOption = None,
) -> None:
    """Put failed tasks back in their queue, attempts reset.

    Example: asynctask failed requeue emails 3f2a...
    """
    with _errors():
        count = _transport(sets, config).requeue_failed(queue, ids or None)
    typer.echo(f"Requeued {count} tasks to {queue}.")


@failed_app.command("purge")
def failed_purge(
    queue: Annotated[str, typer.Argument(help="Queue name.")],
    ids: Annotated[list[str] | None, typer.Argument(help="Task ids; all when none.")] = None,
    sets: SetOption = None,
    config: ConfigOption = None,
) -> None:
    """Delete failed tasks for good.

    Example: asynctask failed purge emails
    """
    with _errors():
        count = _transport(sets, config).purge_failed(queue, ids or None)
    typer.echo(f"Purged {count} failed tasks from {queue}.")


@app.command()
def plugins(imports: ImportOption = None, as_json: JsonOption = False) -> None:
    """List installed transports and workers with their distributions and versions.

    Example: asynctask plugins
    """
    from asynctask.plugins import load_plugins

    with _errors():
        registry = load_plugins(imports or [])
    transports = {
        entry.plugin: sorted(s for s, e in registry.transports.items() if e is entry)
        for entry in registry.transports.values()
    }
    rows = []
    for info in registry.plugins:
        kind = "transport" if info.name in transports else "worker"
        detail = ", ".join(f"{s}:" for s in transports.get(info.name, []))
        if info.group == "asynctask":
            workers_of = [
                n for n, w in registry.workers.items() if w.source == f"plugin {info.name!r}"
            ]
            if workers_of and not detail:
                kind, detail = "workers", ", ".join(sorted(workers_of))
        else:
            detail = info.name
        rows.append(
            {
                "name": info.name,
                "kind": kind,
                "distribution": info.distribution,
                "version": info.version,
                "provides": detail,
            }
        )
    for name, entry in sorted(registry.workers.items()):
        if entry.source.startswith("module"):
            rows.append(
                {
                    "name": name,
                    "kind": "worker",
                    "distribution": "-",
                    "version": "-",
                    "provides": entry.source,
                }
            )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    header = ["name", "kind", "distribution", "version", "provides"]
    typer.echo(_table([[r[h] for h in header] for r in rows], header))


@app.command("settings")
def show_settings(
    sets: SetOption = None, config: ConfigOption = None, as_json: JsonOption = False
) -> None:
    """Show the effective settings and where each value came from (passwords hidden).

    Example: asynctask settings --set asynctask_workers_poll_interval=250
    """
    with _errors():
        settings = _settings(sets, config)
    rows = []
    for name in SETTINGS:
        shown = settings.describe(name)
        if name == "asynctask_transport" and settings.values[name] is None:
            from asynctask.uri import redact

            shown = redact(settings.transport) + " (embedded default)"
        rows.append({"name": name, "value": shown, "source": settings.sources[name]})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(
        _table([[r["name"], r["value"], r["source"]] for r in rows], ["setting", "value", "source"])
    )


@app.command()
def schedule(
    sets: SetOption = None, config: ConfigOption = None, as_json: JsonOption = False
) -> None:
    """List the entries of asynctask_scheduled_workers with their next fire times.

    Example: asynctask schedule --config /etc/asynctask.toml
    """
    from asynctask.scheduler import next_fire_times

    with _errors():
        rows = next_fire_times(_settings(sets, config))
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        typer.echo("No schedules configured.")
        return
    table = [
        [r["name"], str(r["runs"]), r["queue"], json.dumps(r["schedule"]), r["next"] or "never"]
        for r in rows
    ]
    typer.echo(_table(table, ["name", "runs", "queue", "schedule", "next"]))


def _run(command: Callable[[], None]) -> None:
    try:
        command()
    except KeyboardInterrupt:
        sys.exit(130)


def main() -> None:
    """Entry point of ``asynctask``."""
    _run(lambda: app())


workers_app = typer.Typer(
    add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False
)
workers_app.command()(workers)


def workers_main() -> None:
    """Entry point of ``asynctask-workers``: the same as ``asynctask workers``."""
    _run(lambda: workers_app())
