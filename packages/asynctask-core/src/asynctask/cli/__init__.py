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

import sys
from collections.abc import Callable

import typer

from asynctask.cli import inspect
from asynctask.cli.common import app, failed_app
from asynctask.cli.workers import workers
from asynctask.logs import redact_last_resort
from asynctask.proctitle import hide_passwords
from asynctask.syspath import working_folder_last

__all__ = ["app", "main", "workers_main"]

# The commands, in the order `asynctask --help` lists them.
app.command()(workers)
app.command()(inspect.submit)
app.command()(inspect.queues)
app.command()(inspect.purge)
failed_app.command("list")(inspect.failed_list)
failed_app.command("requeue")(inspect.failed_requeue)
failed_app.command("purge")(inspect.failed_purge)
app.command()(inspect.schedule)
app.command()(inspect.plugins)
app.command("settings")(inspect.show_settings)


def _run(command: Callable[[], None]) -> None:
    hide_passwords()  # first: a --set password is in this process's argv, seen by `ps`
    redact_last_resort()
    working_folder_last()  # --import finds the project's modules, after all others
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
