"""Every hook asynctask calls on its plugins.

A plugin is a module named by an entry point of the group ``asynctask``; it implements
some of these hooks with ``@asynctask.hookimpl``. Hooks receive a ``register`` callback
rather than return values, so one plugin can register many things and the built-ins
(``localmem``) go through the same door. A hook may gain arguments, never lose one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
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
