"""The ``asynctask`` command: run workers, submit tasks, look at queues and failures.

Exit codes are the one table of ``asynctask.exitcodes`` (and of the README): 0 done,
1 outcome not obtained, 2 bad usage/settings or a permanent backend error, 3 backend
unreachable, 4 forced stop, 5 crash loop, 70 unexpected error, 124 ``wait`` timed out.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable

import typer

from asynctask import exitcodes
from asynctask.cli import changes, inspect, tasks
from asynctask.cli.common import app, failed_app
from asynctask.cli.workers import workers
from asynctask.logs import redact_last_resort
from asynctask.proctitle import hide_passwords
from asynctask.syspath import working_folder_last

__all__ = ["add_plugin_commands", "app", "main", "workers_main"]

# The commands, in the order `asynctask --help` lists them.
app.command()(workers)
app.command()(inspect.submit)
app.command()(inspect.queues)
app.command()(tasks.task)
app.command()(tasks.wait)
app.command()(tasks.cancel)
app.command()(changes.purge)
failed_app.command("list")(inspect.failed_list)
failed_app.command("requeue")(changes.failed_requeue)
failed_app.command("purge")(changes.failed_purge)
app.command()(inspect.schedule)
app.command()(inspect.plugins)
app.command("settings")(inspect.show_settings)


_plugin_commands_added = False


def add_plugin_commands() -> None:
    """Let plugins add their subcommands (``asynctask_register_commands``), once.

    A plugin that fails to load is not reported here: the command that needs plugins
    reports it, and ``asynctask --help`` still works.
    """
    global _plugin_commands_added
    if _plugin_commands_added:
        return
    _plugin_commands_added = True
    from asynctask.errors import PluginError
    from asynctask.plugins import load_plugins

    try:
        registry = load_plugins()
    except PluginError:
        return
    for impl in registry.manager.hook.asynctask_register_commands.get_hookimpls():
        try:
            impl.function(app)
        except Exception as exc:
            # One plugin's broken command must not take the whole command line down.
            print(
                f"asynctask: warning: plugin {impl.plugin_name!r} failed to add its commands: "
                f"{type(exc).__name__}: {exc}",
                file=sys.stderr,
            )


def _run(command: Callable[[], None]) -> None:
    hide_passwords()  # first: a --set password is in this process's argv, seen by `ps`
    redact_last_resort()
    working_folder_last()  # --import finds the project's modules, after all others
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
    add_plugin_commands()
    _run(lambda: app())


workers_app = typer.Typer(
    add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False
)
workers_app.command()(workers)


def workers_main() -> None:
    """Entry point of ``asynctask-workers``: the same as ``asynctask workers``."""
    _run(lambda: workers_app())
