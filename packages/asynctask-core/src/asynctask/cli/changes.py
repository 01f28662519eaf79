"""Commands that delete or move tasks: purge, failed requeue, failed purge.

On a terminal they ask before deleting (``--yes`` skips the question; scripts, whose
stdin is not a terminal, are not asked). Ids that are not in the failed store are named,
and the command exits 1: the outcome asked for was not obtained.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from asynctask import exitcodes
from asynctask.cli.common import (
    ConfigOption,
    JsonOption,
    SetOption,
    fail,
    open_transport,
    reported_errors,
)

YesOption = Annotated[
    bool, typer.Option("--yes", "-y", help="Do not ask for confirmation on a terminal.")
]
QueueArgument = Annotated[str, typer.Argument(help="Queue name.")]
IdsArgument = Annotated[list[str] | None, typer.Argument(help="Task ids; all when none.")]


def _confirmed(question: str, yes: bool) -> bool:
    """Whether to go on: yes without asking under --yes or off a terminal."""
    if yes or not sys.stdin.isatty():
        return True
    return typer.confirm(question, default=False)


def _declined(queue: str, as_json: bool) -> typer.Exit:
    if as_json:
        typer.echo(json.dumps({"queue": queue, "cancelled": True}))
    else:
        typer.echo("Nothing deleted.", err=True)
    return typer.Exit(exitcodes.NOT_OBTAINED)


def _finish(result: dict[str, Any], text: str, as_json: bool) -> None:
    typer.echo(json.dumps(result, indent=2) if as_json else text)
    missing = result.get("missing") or []
    if missing:
        raise fail(
            f"not in the failed store of {result['queue']}: {', '.join(missing)}",
            exitcodes.NOT_OBTAINED,
        )


def _each_id(
    change: Callable[[str, list[str]], int], queue: str, ids: list[str]
) -> tuple[int, list[str]]:
    """Apply a by-id change to each id on its own: how many it changed, and the ids it
    did not find. A call per id never reads the failed store whole (redis and pgsql find
    an id through an index), so naming the missing ids costs nothing as the store grows."""
    count, missing = 0, []
    for task_id in dict.fromkeys(ids):
        found = change(queue, [task_id])
        count += found
        if not found:
            missing.append(task_id)
    return count, missing


def purge(
    queue: QueueArgument,
    yes: YesOption = False,
    sets: SetOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete every waiting task of a queue (not those in flight or failed).

    Example: asynctask purge emails --yes
    """
    with reported_errors():
        transport = open_transport(sets, config)
        if not sys.stdin.isatty() or yes:
            waiting = None
        else:
            stats = transport.queue_stats(queue)
            waiting = sum(n or 0 for n in (stats.ready, stats.delayed, stats.retrying))
        if waiting is not None and not _confirmed(
            f"Delete the {waiting} waiting tasks of queue {queue}?", yes
        ):
            raise _declined(queue, as_json)
        count = transport.purge(queue)
    _finish({"queue": queue, "purged": count}, f"Purged {count} tasks from {queue}.", as_json)


def failed_requeue(
    queue: QueueArgument,
    ids: IdsArgument = None,
    sets: SetOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Put failed tasks back in their queue, attempts reset; exit 1 naming ids not there.

    Example: asynctask failed requeue emails 3f2a...
    """
    with reported_errors():
        transport = open_transport(sets, config)
        missing: list[str] = []
        if ids:
            count, missing = _each_id(transport.requeue_failed, queue, ids)
        else:
            count = transport.requeue_failed(queue)
    result = {"queue": queue, "requeued": count, "missing": missing}
    _finish(result, f"Requeued {count} tasks to {queue}.", as_json)


def failed_purge(
    queue: QueueArgument,
    ids: IdsArgument = None,
    yes: YesOption = False,
    sets: SetOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete failed tasks for good; exit 1 naming ids not there.

    Example: asynctask failed purge emails --yes
    """
    with reported_errors():
        transport = open_transport(sets, config)
        missing: list[str] = []
        if sys.stdin.isatty() and not yes:
            n = len(set(ids)) if ids else transport.queue_stats(queue).failed
            shown = "all" if n is None else str(n)
            if not _confirmed(f"Delete {shown} failed tasks of queue {queue} for good?", yes):
                raise _declined(queue, as_json)
        if ids:
            count, missing = _each_id(transport.purge_failed, queue, ids)
        else:
            count = transport.purge_failed(queue)
    result = {"queue": queue, "purged": count, "missing": missing}
    _finish(result, f"Purged {count} failed tasks from {queue}.", as_json)
