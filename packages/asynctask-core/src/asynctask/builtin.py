"""The core's own plugin: the ``localmem:`` transport and the scheduler's command worker.

They register through the same hooks as any installed plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from asynctask.hookspecs import RegisterTransport, RegisterWorker, hookimpl

if TYPE_CHECKING:
    from asynctask.transport import Transport


@hookimpl(trylast=True)
def asynctask_register_transports(register: RegisterTransport) -> None:
    """Register ``localmem:``."""

    def load() -> type[Transport]:
        from asynctask.transports.localmem import LocalMemTransport

        return LocalMemTransport

    register(("localmem",), load)


@hookimpl(trylast=True)
def asynctask_register_workers(register: RegisterWorker) -> None:
    """Register ``asynctask_command``, which runs the ``command`` schedule entries."""
    from asynctask.command import CommandWorker

    register(CommandWorker)
