"""Mapping ``OSError`` to asynctask's errors at the boundary of the transport."""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from asynctask.errors import TransportError, TransportRefused, TransportUnavailable

P = ParamSpec("P")
R = TypeVar("R")

# Conditions that may pass (a full disk, a flaky network mount): the base class retries
# these for retry_timeout. Anything else (no permission, read-only) is reported at once.
_PASSING = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EIO,
    errno.ESTALE,
    errno.EAGAIN,
    errno.EMFILE,
    errno.ENFILE,
    errno.ENOMEM,
    errno.ETIMEDOUT,
}


def map_os_error(exc: OSError) -> TransportError:
    """Our error for a failed file operation, naming the file."""
    where = f": {exc.filename}" if exc.filename else ""
    text = f"{exc.strerror or exc}{where}"
    if exc.errno in _PASSING:
        return TransportUnavailable(f"file system unavailable ({text})")
    # No permission, a read-only or missing folder: waiting will not cure it.
    return TransportRefused(
        f"file system error ({text}); check that the folder exists and that this user "
        "may read and write it (see the URI option 'mode' for shared folders)"
    )


def os_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a primitive so that an ``OSError`` leaves it as a ``TransportError``."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except OSError as exc:
            raise map_os_error(exc) from exc

    return run
