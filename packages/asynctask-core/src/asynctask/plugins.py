"""Loading plugins and the registries they fill.

``load_plugins()`` is called lazily (never at import time) and only once per process. It
reads the entry-point groups ``asynctask`` (pluggy plugins: transports, workers) and
``asynctask.workers`` (one worker class per entry point) and skips the names listed in
``ASYNCTASK_DISABLE_PLUGINS``. An entry point that cannot be loaded (an import error, a
class with no ``name``) disables only itself: it is kept in ``Registry.broken`` with its
error, shown by ``asynctask plugins``, logged once as a warning, and named in the error
of a command that needs what it would have registered (an unknown worker or scheme).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata as md
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pluggy

from asynctask import events, hookspecs
from asynctask.errors import InvalidURIError, PluginError, UnknownWorkerError
from asynctask.uri import redact, uri_scheme

if TYPE_CHECKING:
    from asynctask.transport import Transport
    from asynctask.worker import AsyncTaskWorker

logger = logging.getLogger("asynctask.plugins")

DISABLE_VARIABLE = "ASYNCTASK_DISABLE_PLUGINS"
WORKERS_GROUP = "asynctask.workers"

#: Where to find the transports we know of, for the error on an unknown scheme.
KNOWN_DISTRIBUTIONS = {
    "filesys": "asynctask-filesys",
    "pgsql": "asynctask-pgsql",
    "postgresql": "asynctask-pgsql",
    "postgres": "asynctask-pgsql",
    "redis": "asynctask-redis",
    "rediss": "asynctask-redis",
    "unix": "asynctask-redis",
    "amqp": "asynctask-amqp",
    "amqps": "asynctask-amqp",
}


def install_hint(distribution: str) -> str:
    """How to install one of our distributions, from the index or from a checkout."""
    return (
        f'pip install "{distribution}" (from a checkout of asynctask: '
        f"pip install ./packages/{distribution})"
    )


@dataclass(frozen=True)
class TransportEntry:
    """A registered transport: its schemes, its loader and the plugin it came from."""

    schemes: tuple[str, ...]
    load: Callable[[], type[Transport]]
    plugin: str


@dataclass(frozen=True)
class WorkerEntry:
    """A registered worker class and where it came from."""

    cls: type[AsyncTaskWorker]
    source: str
    #: the entry point (``name = module:Class``) it came from, if any
    entry_point: str | None = None
    #: the distribution that declares that entry point (or the plugin), if any
    distribution: str | None = None


@dataclass(frozen=True)
class BrokenPlugin:
    """An entry point that failed to load: disabled, with why."""

    name: str
    value: str
    group: str
    distribution: str
    version: str
    error: str

    def describe(self) -> str:
        """``'thumbs' (app:Thumb, from my-app 1.0): ImportError: ...``."""
        return (
            f"{self.name!r} ({self.value}, from {self.distribution} {self.version}): {self.error}"
        )


#: workers asynctask registers for itself; never offered to users as "known workers"
INTERNAL_WORKERS = frozenset({"asynctask_command"})


@dataclass(frozen=True)
class PluginInfo:
    """An installed plugin, for ``asynctask plugins``."""

    name: str
    distribution: str
    version: str
    group: str
    #: the entry point's target, ``module`` or ``module:Class``
    value: str = ""


class Registry:
    """The transports and workers known to this process."""

    def __init__(self) -> None:
        self.transports: dict[str, TransportEntry] = {}
        self.workers: dict[str, WorkerEntry] = {}
        self.plugins: list[PluginInfo] = []
        self.broken: list[BrokenPlugin] = []
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)

    # -- filling ----------------------------------------------------------------------

    def add_transport(
        self, schemes: Iterable[str], load: Callable[[], type[Transport]], plugin: str
    ) -> None:
        """Register a transport loader under its schemes; a taken scheme is an error."""
        entry = TransportEntry(tuple(s.lower() for s in schemes), load, plugin)
        for scheme in entry.schemes:
            if scheme in self.transports and self.transports[scheme].plugin != plugin:
                raise PluginError(
                    f"plugins {self.transports[scheme].plugin!r} and {plugin!r} both register "
                    f"the URI scheme {scheme!r}; uninstall one or disable it with "
                    f"{DISABLE_VARIABLE}"
                )
            self.transports[scheme] = entry

    def add_worker(
        self,
        cls: type[AsyncTaskWorker],
        source: str,
        entry_point: str | None = None,
        distribution: str | None = None,
    ) -> None:
        """Register a worker class by its ``name``; two classes with one name are an error."""
        from asynctask.worker import AsyncTaskWorker

        if not (isinstance(cls, type) and issubclass(cls, AsyncTaskWorker)):
            raise PluginError(f"{source} registered {cls!r}, which is not an AsyncTaskWorker")
        name = cls.name
        if not isinstance(name, str) or not name:
            raise PluginError(f"{source} registered {cls.__qualname__} without a `name`")
        known = self.workers.get(name)
        if known is not None and known.cls is not cls:
            raise PluginError(
                f"two workers are named {name!r}: {_qualname(known.cls)} (from {known.source}) "
                f"and {_qualname(cls)} (from {source}); rename one"
            )
        self.workers[name] = WorkerEntry(cls, source, entry_point, distribution)

    def register_plugin(self, plugin: object, name: str) -> None:
        """Register a pluggy plugin module and call its hooks."""
        self.manager.register(plugin, name=name)
        self.manager.check_pending()
        hook = self.manager.subset_hook_caller(
            "asynctask_register_transports",
            remove_plugins=[p for p in self.manager.get_plugins() if p is not plugin],
        )
        hook(register=lambda schemes, load: self.add_transport(schemes, load, name))
        whook = self.manager.subset_hook_caller(
            "asynctask_register_workers",
            remove_plugins=[p for p in self.manager.get_plugins() if p is not plugin],
        )
        whook(register=lambda cls: self.add_worker(cls, f"plugin {name!r}"))
        if self is _registry:  # a plugin registered after loading sees events too
            events.bind(self.manager)

    # -- looking up -------------------------------------------------------------------

    def transport_class(self, uri: str) -> type[Transport]:
        """The transport class for ``uri``'s scheme, or a clear ``InvalidURIError``."""
        scheme = uri_scheme(uri)
        entry = self.transports.get(scheme)
        if entry is None:
            installed = ", ".join(sorted(self.transports)) or "none"
            hint = ""
            if scheme in KNOWN_DISTRIBUTIONS:
                dist = KNOWN_DISTRIBUTIONS[scheme]
                hint = f"; install it: {install_hint(dist)}"
            raise InvalidURIError(
                f"{redact(uri)!r} does not resolve to a known transport; "
                f"installed: {installed}{hint}{self._broken_hint(hookspecs.PROJECT)}"
            )
        try:
            return entry.load()
        except ImportError as exc:
            raise PluginError(
                f"the transport plugin {entry.plugin!r} for {scheme!r} failed to import: {exc}"
            ) from exc

    def worker_class(self, name: str) -> type[AsyncTaskWorker]:
        """The worker class named ``name``, or an error listing the known ones."""
        entry = self.workers.get(name)
        if entry is None:
            raise UnknownWorkerError(
                f"worker {name!r} does not exist{self.unknown_worker_hint(name)}; known "
                f"workers: {', '.join(sorted(self.user_workers())) or 'none'} (register "
                "workers through the entry-point group 'asynctask.workers', a plugin, or "
                "--import MODULE)"
            )
        return entry.cls

    def user_workers(self) -> dict[str, WorkerEntry]:
        """The workers a user may name (asynctask's internal ones left out)."""
        return {n: e for n, e in self.workers.items() if n not in INTERNAL_WORKERS}

    def unknown_worker_hint(self, name: str) -> str:
        """What may explain an unknown worker name: an entry point of that name that
        registers another worker name, or plugins that failed to load."""
        typed_as = [
            w
            for w, e in self.workers.items()
            if e.entry_point is not None and e.entry_point.split(" = ")[0] == name
        ]
        hint = ""
        if typed_as:
            hint = f" (the entry point {name!r} registers the worker {typed_as[0]!r}: use that)"
        return hint + self._broken_hint()

    def _broken_hint(self, group: str | None = None) -> str:
        broken = [b for b in self.broken if group is None or b.group == group]
        if not broken:
            return ""
        listed = "; ".join(b.describe() for b in broken)
        return f"; disabled because they failed to load: {listed}"

    # -- imports ----------------------------------------------------------------------

    def import_workers(self, module_name: str) -> None:
        """Import ``module_name`` and register every worker class it defines."""
        from asynctask.worker import AsyncTaskWorker

        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise PluginError(f"cannot import module {module_name!r}: {exc}") from exc
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, AsyncTaskWorker)
                and value is not AsyncTaskWorker
                and value.__module__ == module.__name__
                and getattr(value, "name", None)
            ):
                self.add_worker(value, f"module {module_name!r}")


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def disabled_plugins() -> set[str]:
    """Names listed in ``ASYNCTASK_DISABLE_PLUGINS``."""
    raw = os.environ.get(DISABLE_VARIABLE, "")
    return {name.strip() for name in raw.split(",") if name.strip()}


def _distribution(ep: md.EntryPoint) -> tuple[str, str]:
    dist = ep.dist
    if dist is None:
        return "?", "?"
    return dist.metadata["Name"], dist.version


_registry: Registry | None = None
_lock = threading.Lock()


def load_plugins(imports: Iterable[str] = ()) -> Registry:
    """Load every installed plugin once per process, then import ``imports`` modules.

    A plugin that fails to load is disabled (see ``Registry.broken``); the others load.
    """
    global _registry
    with _lock:
        if _registry is None:
            registry = Registry()
            off = disabled_plugins()
            for ep in sorted(md.entry_points(group=hookspecs.PROJECT), key=lambda e: e.name):
                if ep.name not in off:
                    _load_plugin(registry, ep)
            for ep in sorted(md.entry_points(group=WORKERS_GROUP), key=lambda e: e.name):
                if ep.name not in off:
                    _load_worker(registry, ep)
            for broken in registry.broken:
                logger.warning(
                    "plugin %r (%s, from %s %s) failed to load and is disabled: %s; "
                    "uninstall it or add it to %s",
                    broken.name,
                    broken.value,
                    broken.distribution,
                    broken.version,
                    broken.error,
                    DISABLE_VARIABLE,
                )
            events.bind(registry.manager)
            _registry = registry
        registry = _registry
    for module_name in imports:
        registry.import_workers(module_name)
    return registry


def _broken(ep: md.EntryPoint, exc: BaseException) -> BrokenPlugin:
    dist, version = _distribution(ep)
    return BrokenPlugin(ep.name, ep.value, ep.group, dist, version, _error_text(exc))


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, PluginError) else str(exc)


def _load_plugin(registry: Registry, ep: md.EntryPoint) -> None:
    """Load and register one pluggy plugin; a failure disables only it."""
    try:
        plugin = ep.load()
        registry.register_plugin(plugin, ep.name)
    except Exception as exc:
        with contextlib.suppress(ValueError):
            registry.manager.unregister(name=ep.name)
        registry.broken.append(_broken(ep, exc))
        return
    dist, version = _distribution(ep)
    registry.plugins.append(PluginInfo(ep.name, dist, version, hookspecs.PROJECT, ep.value))


def _load_worker(registry: Registry, ep: md.EntryPoint) -> None:
    """Load and register one worker entry point; a failure disables only it."""
    dist, version = _distribution(ep)
    try:
        cls = ep.load()
        registry.add_worker(cls, f"entry point {ep.name!r}", f"{ep.name} = {ep.value}", dist)
    except Exception as exc:
        registry.broken.append(_broken(ep, exc))
        return
    registry.plugins.append(PluginInfo(ep.name, dist, version, WORKERS_GROUP, ep.value))


def reset_plugins() -> None:
    """Forget loaded plugins (for tests that change what is installed)."""
    global _registry
    with _lock:
        _registry = None
        events.bind(None)
