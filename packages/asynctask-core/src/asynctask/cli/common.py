"""What every subcommand shares: the app, common options, errors and tables."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from asynctask import exitcodes
from asynctask.errors import AsynctaskError
from asynctask.settings import Settings, configure, load_settings

app = typer.Typer(
    name="asynctask",
    help="Background task queue: run workers, submit tasks, inspect queues and failures.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def installed_distributions() -> list[tuple[str, str]]:
    """Every installed distribution named asynctask or asynctask-*, with its version."""
    from importlib.metadata import distributions

    found = {}
    for dist in distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name == "asynctask" or name.startswith("asynctask-"):
            found[name] = dist.version
    return sorted(found.items())


def _show_version(value: bool) -> None:
    if value:
        for name, version in installed_distributions():
            typer.echo(f"{name} {version}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="List every installed asynctask distribution with its version, and exit.",
            callback=_show_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """Background task queue: run workers, submit tasks, inspect queues and failures."""


failed_app = typer.Typer(
    help="The failed store: list, requeue or purge tasks whose retries are spent.",
    no_args_is_help=True,
)
app.add_typer(failed_app, name="failed")

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


def fail(message: str, code: int) -> typer.Exit:
    """Print ``message`` as one line on stderr; return the ``typer.Exit`` to raise."""
    from asynctask.uri import redact

    # One line: a driver's multi-line text (libpq's) reads as one error in a log.
    line = "; ".join(part.strip() for part in message.splitlines() if part.strip())
    typer.echo(f"asynctask: error: {redact(line)}", err=True)
    return typer.Exit(code)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn our errors into one line and an exit code (see ``asynctask.exitcodes``)."""
    try:
        yield
    except AsynctaskError as exc:
        raise fail(str(exc), exitcodes.for_error(exc)) from exc


def use_settings(sets: list[str] | None, config: Path | None) -> Settings:
    settings = load_settings(config=config, overrides=sets or [])
    configure(settings)
    return settings


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    return "\n".join(lines)


def count_text(value: int | None, estimated: bool = False) -> str:
    """A count in a table: ``-`` where the transport cannot tell, ``~`` before an estimate
    (``QueueStats.estimated``)."""
    if value is None:
        return "-"
    return f"~{value}" if estimated else str(value)


# -- workers ---------------------------------------------------------------------------


def open_transport(sets: list[str] | None, config: Path | None) -> Any:
    from asynctask.api import get_transport

    use_settings(sets, config)
    return get_transport()


def shorten(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
