"""``get_transport``: one transport object per URI per process."""

from __future__ import annotations

import logging
import threading

from asynctask.errors import ConfigurationError
from asynctask.plugins import install_hint, load_plugins
from asynctask.settings import get_settings
from asynctask.transport import Transport

logger = logging.getLogger("asynctask")

_transports: dict[str, Transport] = {}
_lock = threading.Lock()


def get_transport(uri: str | None = None) -> Transport:
    """Return the transport for ``uri`` (default: the ``asynctask_transport`` setting).

    One object per URI per process, shared between threads; a closed one is replaced.
    """
    settings = get_settings() if uri is None else None
    if settings is not None:
        uri = settings.transport
        if settings.values["asynctask_transport"] is None:
            logger.info("No asynctask_transport set; using the default %s", uri)
    assert uri is not None
    with _lock:
        transport = _transports.get(uri)
        if transport is None or transport.closed:
            registry = load_plugins()
            default = settings is not None and settings.values["asynctask_transport"] is None
            if default and "filesys" not in registry.transports:
                raise ConfigurationError(
                    "no transport is configured and the default one, filesys, is not "
                    f"installed: {install_hint('asynctask-filesys')}, or set "
                    "asynctask_transport (e.g. ASYNCTASK_TRANSPORT=redis://127.0.0.1)"
                )
            cls = registry.transport_class(uri)
            transport = cls(uri)
            _transports[uri] = transport
        limits = settings if settings is not None else get_settings()
        transport.max_payload_bytes = limits.max_payload_bytes
        transport.signing_keys = limits.signing_keys
        transport.state_uri = limits.state
        transport.status_ttl = limits.status_ttl
        return transport


def close_transports() -> None:
    """Close every transport this process opened (at exit, and between tests)."""
    with _lock:
        for transport in _transports.values():
            transport.close()
        _transports.clear()
