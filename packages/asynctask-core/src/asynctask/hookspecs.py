"""Every hook asynctask calls on its plugins.

A plugin is a module named by an entry point of the group ``asynctask``; it implements
some of these hooks with ``@asynctask.hookimpl``. Hooks receive a ``register`` callback
rather than return values, so one plugin can register many things and the built-ins
(``localmem``) go through the same door. A hook may gain arguments, never lose one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import pluggy

if TYPE_CHECKING:
    import typer

    from asynctask.transport import Transport
    from asynctask.worker import AsyncTaskWorker

PROJECT = "asynctask"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: ``register(schemes, load)``: ``load()`` imports and returns the transport class, so
#: that listing transports (``asynctask --help``, ``asynctask plugins``) imports no driver.
RegisterTransport = Callable[[tuple[str, ...], Callable[[], "type[Transport]"]], None]
#: ``register(worker_class)``
RegisterWorker = Callable[["type[AsyncTaskWorker]"], None]


@hookspec
def asynctask_register_transports(register: RegisterTransport) -> None:
    """Register transport classes by URI scheme: ``register(("redis", "rediss"), load)``."""


@hookspec
def asynctask_register_workers(register: RegisterWorker) -> None:
    """Register ``AsyncTaskWorker`` subclasses: ``register(MyWorker)``."""


# -- lifecycle hooks: the middleware layer (DESIGN.md section 8) -------------------------
#
# They are called through ``asynctask.events`` only, in the process where the event
# happens: submits in the producer, task events in the worker child, child events in the
# supervisor. A hook that raises is logged once and switched off for that process; it
# never fails a task. With no plugin implementing a hook, calling it costs one attribute
# test (the facade skips it).

#: How an attempt ended. ``retried``: it raised and will run again after a back-off;
#: ``failed``: it went to the failed store (retries spent, not retried, or its worker kept
#: dying); ``cancelled`` and ``expired``: DESIGN.md section 6.
Outcome = Literal["succeeded", "retried", "failed", "cancelled", "expired"]
OUTCOMES: tuple[Outcome, ...] = ("succeeded", "retried", "failed", "cancelled", "expired")

#: What happened to a child of the supervisor. ``started``: its slot's first process was
#: launched; ``restarted``: a later one was (after a crash, a recycle or a timeout);
#: ``exited``: a process ended (``exit_status`` is its return code, negative for a signal).
ChildEvent = Literal["started", "restarted", "exited"]
CHILD_EVENTS: tuple[ChildEvent, ...] = ("started", "restarted", "exited")


@hookspec
def asynctask_task_submitted(queue: str, ids: Sequence[str]) -> None:
    """Tasks were stored on ``queue`` (one call per ``submit_task``/``submit_tasks``).

    Called in the submitting process after the backend accepted them.
    """


@hookspec
def asynctask_submit_headers(queue: str) -> Mapping[str, str] | None:
    """Headers to store with the tasks about to be submitted to ``queue`` (or None).

    Called in the submitting process once per ``submit_task``/``submit_tasks``, before
    anything is written; the returned mappings of every plugin are merged. Headers are
    short strings (a W3C ``traceparent``, for one) and reach ``asynctask_task_started``.
    """


@hookspec
def asynctask_task_started(
    queue: str, worker: str, task_id: str, attempt: int, headers: Mapping[str, str]
) -> None:
    """A worker is about to run ``process()`` for attempt ``attempt`` (1 = first).

    ``headers`` are the task's headers (those ``asynctask_submit_headers`` added).
    """


@hookspec
def asynctask_task_finished(
    queue: str,
    worker: str,
    task_id: str,
    attempt: int,
    outcome: Outcome,
    duration: float,
    error: BaseException | None,
) -> None:
    """An attempt ended and was settled with ``outcome`` (see ``Outcome``).

    ``duration`` is the seconds ``process()`` ran (0 when it did not run, as for a task
    whose worker kept dying); ``error`` is the exception it raised, else ``None``.
    """


@hookspec
def asynctask_child_event(queue: str, event: ChildEvent, pid: int, exit_status: int | None) -> None:
    """A supervised child process of ``queue`` started, restarted or exited.

    Called in the supervisor; ``exit_status`` is ``None`` for ``started``.
    """


@hookspec
def asynctask_register_commands(app: typer.Typer) -> None:
    """Add subcommands to the ``asynctask`` command: ``app.command()(my_command)``.

    Called when the command starts, so ``asynctask --help`` lists them. Import heavy
    modules inside the command, not here: every ``asynctask`` run loads this hook.
    """


@hookspec(firstresult=True)
def asynctask_metrics_server(
    port: int, transport: Transport, queues: Sequence[str]
) -> Callable[[], None] | None:
    """Serve metrics of ``asynctask workers`` on ``port``; return a function that stops it.

    Called in the supervisor before its children start, so the implementation can prepare
    what the children report into (they inherit its environment). Stops at first non-None
    result. With no implementation, ``--metrics-port`` is an error naming
    ``asynctask-prometheus``.
    """
