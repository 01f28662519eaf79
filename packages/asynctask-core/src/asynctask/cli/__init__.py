"""The ``asynctask`` command: run workers, submit tasks, look at queues and failures.

Exit codes are the one table of ``asynctask.exitcodes`` (and of the README): 0 done,
1 outcome not obtained, 2 bad usage/settings or a permanent backend error, 3 backend
unreachable, 4 forced stop, 5 crash loop, 70 unexpected error.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable

import typer

from asynctask import exitcodes
from asynctask.cli import changes, inspect
from asynctask.cli.common import app, failed_app
from asynctask.cli.workers import workers

__all__ = ["app", "main", "workers_main"]

# The commands, in the order `asynctask --help` lists them.
app.command()(workers)
app.command()(inspect.submit)
app.command()(inspect.queues)
app.command()(changes.purge)
failed_app.command("list")(inspect.failed_list)
failed_app.command("requeue")(changes.failed_requeue)
failed_app.command("purge")(changes.failed_purge)
app.command()(inspect.schedule)
app.command()(inspect.plugins)
app.command("settings")(inspect.show_settings)


def _run(command: Callable[[], None]) -> None:
    try:
        command()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        # Our errors are reported where they happen (exit 2 or 3); anything else is a bug
        # in asynctask or a plugin: the traceback in full, then one line asking for a report.
        traceback.print_exc()
        typer.echo(
            f"asynctask: unexpected error: {type(exc).__name__}: {exc}; this is a bug, "
            "please report it with the traceback above",
            err=True,
        )
        sys.exit(exitcodes.SOFTWARE)


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
