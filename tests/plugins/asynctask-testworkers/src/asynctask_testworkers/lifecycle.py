"""A plugin that writes every lifecycle event to the file named by ``TESTWORKERS_EVENTS``.

Tests read the file to see which hooks ran in which process. Without the variable it does
nothing. ``TESTWORKERS_RAISE`` names a hook that raises instead (to test that a broken hook
is switched off and never fails a task).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

from asynctask import hookimpl


def _write(hook: str, **fields: Any) -> None:
    path = os.environ.get("TESTWORKERS_EVENTS")
    if not path:
        return
    if os.environ.get("TESTWORKERS_RAISE") == hook:
        _write("raised", name=hook)
        raise RuntimeError(f"{hook} raising on purpose")
    line = json.dumps({"hook": hook, "pid": os.getpid(), "time": time.time(), **fields})
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@hookimpl
def asynctask_task_submitted(queue: str, ids: Sequence[str]) -> None:
    """Record a submit."""
    _write("submitted", queue=queue, ids=list(ids))


@hookimpl
def asynctask_task_started(queue: str, worker: str, task_id: str, attempt: int) -> None:
    """Record a start."""
    _write("started", queue=queue, worker=worker, task_id=task_id, attempt=attempt)


@hookimpl
def asynctask_task_finished(
    queue: str,
    worker: str,
    task_id: str,
    attempt: int,
    outcome: str,
    duration: float,
    error: BaseException | None,
) -> None:
    """Record an end."""
    _write(
        "finished",
        queue=queue,
        worker=worker,
        task_id=task_id,
        attempt=attempt,
        outcome=outcome,
        duration=duration,
        error=None if error is None else repr(error),
    )


@hookimpl
def asynctask_child_event(queue: str, event: str, pid: int, exit_status: int | None) -> None:
    """Record a child's start or end (in the supervisor)."""
    _write("child", queue=queue, event=event, child=pid, exit_status=exit_status)


@hookimpl
def asynctask_register_commands(app: Any) -> None:
    """Add ``asynctask testworkers-hello`` (tests see plugin commands in --help)."""

    @app.command("testworkers-hello")
    def hello() -> None:
        """Say hello from the testworkers plugin."""
        print("hello from a plugin command")
