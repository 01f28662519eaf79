"""Registers the pgsql transport with asynctask; the transport module is imported only when used."""

from __future__ import annotations

from typing import TYPE_CHECKING

from asynctask import hookimpl
from asynctask.hookspecs import RegisterTransport

if TYPE_CHECKING:
    from asynctask.transport import Transport


@hookimpl
def asynctask_register_transports(register: RegisterTransport) -> None:
    """Register the pgsql transport."""

    def load() -> type[Transport]:
        from asynctask_pgsql.transport import PgsqlTransport

        return PgsqlTransport

    register(("pgsql", "postgresql", "postgres"), load)
