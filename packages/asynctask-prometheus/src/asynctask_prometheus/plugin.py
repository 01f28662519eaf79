"""The hook implementations; each imports what it needs when first called."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from asynctask import NotListening, hookimpl
from asynctask_prometheus.recorder import record_finished

if TYPE_CHECKING:
    import typer

    from asynctask.transport import Transport


@hookimpl
def asynctask_metrics_server(
    port: int, transport: Transport, queues: Sequence[str]
) -> Callable[[], None]:
    """Serve the supervisor's metrics on ``port``; children report through files."""
    from asynctask_prometheus.server import start

    return start(port, transport, queues)


@hookimpl
def asynctask_task_finished(queue: str, worker: str, outcome: str, duration: float) -> None:
    """Count the attempt and its duration (in a worker child under ``--metrics-port``);
    elsewhere, bow out of this process's task events at the first one."""
    if not record_finished(queue, worker, outcome, duration):
        raise NotListening


@hookimpl
def asynctask_child_event(queue: str, event: str) -> None:
    """Keep the supervisor's children gauge and restart counter."""
    from asynctask_prometheus.server import child_event

    child_event(queue, event)


@hookimpl
def asynctask_register_commands(app: typer.Typer) -> None:
    """Add ``asynctask top``."""
    from asynctask_prometheus.top import top

    app.command()(top)
