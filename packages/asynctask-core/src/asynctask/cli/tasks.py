"""``asynctask task``, ``wait`` and ``cancel``: what happened to one task (DESIGN.md 6).

Exit codes (``asynctask.exitcodes``): ``task`` 0, or 1 for an id the store does not know;
``wait`` 0 succeeded, 1 failed/cancelled/expired or unknown, 124 timed out; ``cancel`` 0
cancelled, 1 already final or unknown. All three only read, except ``cancel``.

With ``--json`` each prints one JSON object on stdout whatever the outcome, so a script
never parses an empty output: the status as ``task`` shows it; for an id the store does
not know ``{"id": ..., "state": null, "error": ...}``; for ``wait`` past its timeout the
status as it stands (its own ``"error"`` kept: a retrying task's last error) with
``"timed_out": true`` and the timeout's message in ``"timeout_error"``; for ``cancel``
``{"id", "cancelled", "state"}`` (and ``"error"`` when not cancelled). The exit codes
stay the same.
"""

from __future__ import annotations

import json
import time
from typing import Annotated

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
from asynctask.status import TaskStatus

TaskId = Annotated[str, typer.Argument(help="The id submit printed, e.g. 3f2a...")]

_TIMES = ("submitted_at", "started_at", "finished_at")


def task(
    task_id: TaskId,
    sets: SetOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a task's status: state, attempts, times, last error and result.

    Exit 1 when the store does not know the id (never submitted, or forgotten after
    asynctask_status_ttl). Example: asynctask task 3f2a... --json
    """
    with reported_errors():
        found = open_transport(sets, config).status(task_id)
    if found is None:
        raise _failed(task_id, _unknown(task_id), exitcodes.NOT_OBTAINED, as_json)
    _show(found, as_json)


def wait(
    task_id: TaskId,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", help="Give up after S seconds (exit 124).", metavar="S", min=0),
    ] = None,
    sets: SetOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Wait until a task is final and show its status.

    Exit 0 when it succeeded, 1 when it failed, was cancelled or expired (or the id is
    unknown), 124 when --timeout passed first. Example: asynctask wait 3f2a... --timeout 30
    """
    with reported_errors():
        transport = open_transport(sets, config)
        try:
            found = transport.wait(task_id, timeout=timeout)
        except TimeoutError as exc:
            message = f"task {task_id!r} is not final after {timeout:g} s"
            # the status as it stands (one more read, on this path only)
            now = transport.status(task_id) if as_json else None
            raise _failed(
                task_id, message, exitcodes.WAIT_TIMEOUT, as_json, now, timed_out=True
            ) from exc
        except LookupError as exc:
            raise _failed(task_id, str(exc).strip("'\""), exitcodes.NOT_OBTAINED, as_json) from exc
    _show(found, as_json)
    if found.state != "succeeded":
        raise typer.Exit(exitcodes.NOT_OBTAINED)


def cancel(
    task_id: TaskId,
    sets: SetOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Cancel a task: a waiting one never runs; a running one is stopped by its worker.

    Exit 1 when the task was already final or the id is unknown.
    Example: asynctask cancel 3f2a...
    """
    with reported_errors():
        transport = open_transport(sets, config)
        cancelled = transport.cancel(task_id)
        # why not: final (its state) or unknown (none); one more read, on this path only
        found = None if cancelled or not as_json else transport.status(task_id)
    if as_json:
        shown: dict[str, object] = {"id": task_id, "cancelled": cancelled}
        if cancelled:
            shown["state"] = "cancelled"
        elif found is None:
            shown |= {"state": None, "error": _unknown(task_id)}
        else:
            shown |= {"state": found.state, "error": f"task {task_id!r} is already final"}
        typer.echo(json.dumps(shown, indent=2))
    elif cancelled:
        typer.echo(f"Cancelled task {task_id}.")
    if not cancelled:
        if not as_json:
            typer.echo(
                f"asynctask: task {task_id!r} was not cancelled: already final, or unknown",
                err=True,
            )
        raise typer.Exit(exitcodes.NOT_OBTAINED)


def _unknown(task_id: str) -> str:
    return f"no task {task_id!r}: never submitted here, or forgotten"


def _failed(
    task_id: str,
    message: str,
    code: int,
    as_json: bool,
    found: TaskStatus | None = None,
    timed_out: bool = False,
) -> typer.Exit:
    """The message on stderr, and with ``--json`` an object on stdout saying the same:
    the status as far as it is known, else ``"state": null`` and ``"error"`` (as
    ``task`` prints an unknown id); for ``wait`` past its timeout also ``"timed_out"``
    and the message in ``"timeout_error"``, so that the task's own ``"error"`` stays."""
    if as_json:
        shown: dict[str, object]
        if found is not None:
            shown = found.to_dict()
        elif timed_out:  # known at the timeout, gone at the read after it
            shown = {"id": task_id, "state": None, "error": _unknown(task_id)}
        else:
            shown = {"id": task_id, "state": None, "error": message}
        if timed_out:
            shown |= {"timed_out": True, "timeout_error": message}
        typer.echo(json.dumps(shown, indent=2))
    return fail(message, code)


def _show(found: TaskStatus, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(found.to_dict(), indent=2))
        return
    lines = [
        ("id", found.id),
        ("queue", found.queue),
        ("state", found.state),
        ("attempts", str(found.attempts)),
        *((name, _when(getattr(found, name))) for name in _TIMES),
        ("error", found.error or "-"),
        ("result", "-" if found.result is None else json.dumps(found.result)),
    ]
    width = max(len(name) for name, _ in lines)
    for name, value in lines:
        typer.echo(f"{name.ljust(width)}  {value}")


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp)) + f" ({stamp:.3f})"
