"""Registers the in-process ``localmem:`` transport through the same hook as any plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING

from asynctask.hookspecs import RegisterTransport, hookimpl

if TYPE_CHECKING:
    from asynctask.transport import Transport


@hookimpl(trylast=True)
def asynctask_register_transports(register: RegisterTransport) -> None:
    """Register ``localmem:``."""

    def load() -> type[Transport]:
        from asynctask.transports.localmem import LocalMemTransport

        return LocalMemTransport

    register(("localmem",), load)
