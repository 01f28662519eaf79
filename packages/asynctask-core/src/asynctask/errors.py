"""The one exception tree of asynctask.

Every error asynctask raises on purpose is one of these, so a caller can catch
``AsynctaskError`` and know it caught only ours. Transports map their driver's
exceptions at the boundary and raise ours ``from`` the original::

    AsynctaskError
    ├── ConfigurationError        bad settings, bad worker or schedule configuration
    │   └── UnknownWorkerError    a worker name nobody registered
    ├── PluginError               a plugin that fails to load or registers nonsense
    ├── InvalidTaskError          (also ValueError) a bad queue name or payload
    └── TransportError            anything a transport cannot do
        ├── InvalidURIError       (also ValueError) a URI no transport accepts
        ├── TransportUnavailable  the backend cannot be reached (after retrying)
        ├── TransportRefused      the backend answered and refuses for good: wrong
        │                         credentials, unknown database/vhost, refused TLS
        ├── TransportClosed       the transport was closed by its owner
        └── NotSupportedError     a call this transport's backend cannot serve (peek on AMQP)

Messages say what was wrong, with the value, and what to do about it. Passwords are
never part of a message (see ``asynctask.uri.redact``).
"""

from __future__ import annotations


class AsynctaskError(Exception):
    """The base of every error asynctask raises on purpose."""


class ConfigurationError(AsynctaskError):
    """A setting, a worker definition or a schedule is not valid."""


class UnknownWorkerError(ConfigurationError):
    """A worker name that no plugin, entry point or imported module registered."""


class PluginError(AsynctaskError):
    """A plugin failed to load or registered something that is not valid."""


class InvalidTaskError(AsynctaskError, ValueError):
    """A queue name or a payload that breaks the rules; nothing was written."""


class TransportError(AsynctaskError):
    """A transport could not do what was asked."""


class InvalidURIError(TransportError, ValueError):
    """A transport URI that no installed transport accepts, or that one refuses."""


class TransportUnavailable(TransportError):
    """The backend could not be reached, even after retrying for ``retry_timeout``."""


class TransportRefused(TransportError):
    """The backend answered and refused us for a reason retrying cannot cure.

    A wrong user or password, an unknown database or vhost, a TLS set-up the server
    refuses, a bad connection option. Unlike ``TransportUnavailable`` it is never waited
    out: a command ends at once (exit code 2) and ``asynctask workers`` stops every child.
    """


class TransportClosed(TransportError):
    """The transport (or consumer) was closed and cannot be used any more."""


class NotSupportedError(TransportError):
    """A call the transport's backend cannot serve, such as ``peek`` on AMQP.

    Callers that can do without (a dashboard showing counts instead of tasks) catch it;
    the message names the transport and what it can do instead.
    """
