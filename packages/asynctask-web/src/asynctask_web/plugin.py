"""The hook implementation; the command's module is imported only when it runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from asynctask import hookimpl

if TYPE_CHECKING:
    import typer


@hookimpl
def asynctask_register_commands(app: typer.Typer) -> None:
    """Add ``asynctask web``."""
    from asynctask_web.command import web

    app.command()(web)
