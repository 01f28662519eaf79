"""From an ``amqp://`` URI to kombu's connection arguments, and from driver errors to ours.

Every message names the broker as ``host:port (vhost '/', user 'guest')``; the password
is never part of one (py-amqp never quotes it, and ``scrub`` removes it should a driver
message ever carry it).
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import amqp.exceptions

from asynctask.errors import (
    InvalidURIError,
    TransportError,
    TransportRefused,
    TransportUnavailable,
)
from asynctask.uri import Option, boolean, positive_float, positive_int, redact

DEFAULT_PORT = {"amqp": 5672, "amqps": 5671}
#: the queue types asynctask declares (``?queue_type=``)
QUEUE_TYPES = ("classic", "quorum")


def _choice(text: str, allowed: tuple[str, ...]) -> str:
    if text not in allowed:
        raise ValueError(f"expected one of {', '.join(allowed)}")
    return text


def _max_priority(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 9:
        raise ValueError("expected 1-9 (task priorities are 0-9; RabbitMQ advises few levels)")
    return value


#: URI options (beside ``retry_timeout``); see the transport module's docstring.
OPTIONS: dict[str, Option] = {
    "heartbeat": Option(
        positive_int,
        3,
        "AMQP heartbeat in whole seconds; the broker gives a silently dead consumer's "
        "tasks back within 3 heartbeats",
    ),
    "connect_timeout": Option(positive_float, 5.0, "seconds to open a connection"),
    "confirm_timeout": Option(
        positive_float,
        30.0,
        "seconds to wait for the broker's publisher confirm before the connection counts as lost",
    ),
    "relay": Option(
        boolean,
        True,
        "consumers keep their connection in a relay process of their own, so that a task "
        "holding the GIL cannot lose it (false: in the worker's process)",
    ),
    "max_priority": Option(
        _max_priority,
        None,
        "declare new queues with x-max-priority (classic queues) so that submit_task's "
        "priority is honoured, e.g. max_priority=9; without it a priority above 0 is refused",
    ),
    "queue_type": Option(
        lambda text: _choice(text, QUEUE_TYPES),
        "classic",
        "classic or quorum: the type of the queues asynctask declares (its task queues, "
        "their failed stores and the vhost's delay ladder)",
    ),
    "delivery_limit": Option(
        positive_int,
        20,
        "quorum: deliveries after which the broker itself moves a task to its failed "
        "store (x-delivery-limit), a guard beside asynctask's own attempt count",
    ),
    "window_budget": Option(
        positive_float,
        60.0,
        "seconds within which the last task of a consumer's window should start, when "
        "no prefetch is set: the window shrinks from 32 as tasks get long (keep it well "
        "under the broker's consumer_timeout)",
    ),
    "ssl_ca_certs": Option(str, None, "amqps: CA bundle to verify the broker with"),
    "ssl_certfile": Option(str, None, "amqps: client certificate (PEM)"),
    "ssl_keyfile": Option(str, None, "amqps: client certificate's key (PEM)"),
    "ssl_verify": Option(boolean, True, "amqps: verify the broker's certificate and name"),
}

#: kombu / py-amqp connection options passed through as they are (``transport_options``).
DRIVER_OPTIONS: dict[str, Any] = {
    "read_timeout": float,
    "write_timeout": float,
    "frame_max": int,
    "channel_max": int,
    "locale": str,
    "login_method": str,
}


@dataclass(frozen=True)
class ConnectionParams:
    """Where and how to connect; ``describe()`` is what error messages show."""

    #: the brokers to try, in order: ``host:port`` pairs (a cluster's nodes)
    hosts: tuple[tuple[str, int], ...]
    user: str
    password: str = field(repr=False)
    vhost: str
    heartbeat: int
    connect_timeout: float
    confirm_timeout: float
    ssl: dict[str, Any] | None = None
    driver: dict[str, Any] = field(default_factory=dict)
    #: consumers connect from a relay process (see ``asynctask_amqp.relay``)
    relay: bool = True
    #: ``classic`` or ``quorum``: the queues asynctask declares
    queue_type: str = "classic"
    #: quorum: the broker's x-delivery-limit on task queues
    delivery_limit: int = 20
    #: seconds within which the last task of an adaptive window should start
    window_budget: float = 60.0

    @property
    def host(self) -> str:
        """The first broker's host."""
        return self.hosts[0][0]

    @property
    def port(self) -> int:
        """The first broker's port."""
        return self.hosts[0][1]

    def describe(self, index: int | None = None) -> str:
        """``host:port (vhost '/', user 'guest')``: safe for logs and errors; every
        ``host:port`` of the URI, or the one at ``index``."""
        hosts = self.hosts if index is None else [self.hosts[index]]
        where = ",".join(_host_port(host, port) for host, port in hosts)
        return f"{where} (vhost {self.vhost!r}, user {self.user!r})"

    def kombu_kwargs(self, index: int = 0) -> dict[str, Any]:
        """Arguments of ``kombu.Connection`` for these parameters and the broker at
        ``index`` in ``hosts``."""
        driver = dict(self.driver)
        login_method = driver.pop("login_method", None)
        host, port = self.hosts[index]
        ssl_options: Any = self.ssl or False
        if ssl_options and "server_hostname" in ssl_options:
            ssl_options = {**ssl_options, "server_hostname": host}  # each node by its name
        return {
            "hostname": host,
            "port": port,
            "userid": self.user,
            "password": self.password,
            "virtual_host": self.vhost,
            "transport": "pyamqp",
            "ssl": ssl_options,
            "heartbeat": self.heartbeat,
            "connect_timeout": self.connect_timeout,
            "login_method": login_method,
            "transport_options": driver,
        }

    def scrub(self, text: str) -> str:
        """``text`` without the password, should a driver message ever carry it."""
        if self.password and self.password != self.user:
            text = text.replace(self.password, "***")
        return text


def read_params(uri: str, options: dict[str, Any], driver: dict[str, str]) -> ConnectionParams:
    """Read ``amqp[s]://user:password@host:port/vhost`` and the parsed query options.

    Empty user or password: kombu's defaults (``guest``). No path, ``/`` or ``//``:
    vhost ``/``; any other path is the vhost, percent-decoded (``/%2F`` is ``/`` too).
    """
    safe = redact(uri)
    try:
        parts = urlsplit(uri.partition("?")[0])
    except ValueError as exc:
        raise InvalidURIError(f"{safe!r} is not a valid AMQP URI: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORT or not uri.lower().startswith(f"{scheme}://"):
        raise InvalidURIError(
            f"{safe!r} is not an AMQP URI: expected amqp://user:password@host:port/vhost "
            "or amqps://..."
        )
    if parts.fragment:
        raise InvalidURIError(f"{safe!r}: an AMQP URI has no '#fragment'")
    path = parts.path
    vhost = "/" if path in ("", "/") else unquote(path[1:])
    ssl_keys = [name for name in OPTIONS if name.startswith("ssl_")]
    if scheme == "amqp" and any(options[k] != OPTIONS[k].default for k in ssl_keys):
        raise InvalidURIError(f"{safe!r}: ssl_* options need an amqps:// URI")
    extra: dict[str, Any] = {}
    for name, text in driver.items():
        try:
            extra[name] = DRIVER_OPTIONS[name](text)
        except ValueError as exc:
            raise InvalidURIError(f"{safe!r}: option {name}={text!r} is not valid") from exc
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    hosts = tuple(_read_host(item, DEFAULT_PORT[scheme], safe) for item in hostlist.split(","))
    host = hosts[0][0]
    return ConnectionParams(
        hosts=hosts,
        user=unquote(user) or "guest",
        password=unquote(password) or "guest",
        vhost=vhost,
        heartbeat=options["heartbeat"],
        connect_timeout=options["connect_timeout"],
        confirm_timeout=options["confirm_timeout"],
        ssl=_ssl_options(host, options) if scheme == "amqps" else None,
        driver=extra,
        relay=options["relay"],
        queue_type=options["queue_type"],
        delivery_limit=options["delivery_limit"],
        window_budget=options["window_budget"],
    )


def _read_host(item: str, default_port: int, safe: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[::1]:port`` (one of a comma-separated list)."""
    try:
        parts = urlsplit(f"//{item}")
        port = parts.port
    except ValueError as exc:
        raise InvalidURIError(
            f"{safe!r} is not a valid AMQP URI: {item!r} is not a valid host:port: {exc}"
        ) from exc
    if item and not parts.hostname:
        raise InvalidURIError(f"{safe!r} is not a valid AMQP URI: {item!r} is not a host:port")
    return parts.hostname or "localhost", port or default_port


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _ssl_options(host: str, options: dict[str, Any]) -> dict[str, Any]:
    """py-amqp's ``ssl`` argument: verify the broker unless ``ssl_verify=false``."""
    ca, cert, key = options["ssl_ca_certs"], options["ssl_certfile"], options["ssl_keyfile"]
    if not options["ssl_verify"]:
        return {"cert_reqs": ssl.CERT_NONE, "certfile": cert, "keyfile": key}
    if cert is None:
        # the system's CA store (or ssl_ca_certs), with host-name checking
        return {"context": {"cafile": ca, "check_hostname": True}, "server_hostname": host}
    return {
        "ca_certs": ca or ssl.get_default_verify_paths().cafile,
        "certfile": cert,
        "keyfile": key,
        "cert_reqs": ssl.CERT_REQUIRED,
        "server_hostname": host,
    }


# -- driver errors -> ours --------------------------------------------------------------


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` means the connection is gone (as opposed to one refused operation)."""
    if isinstance(exc, amqp.exceptions.ChannelError):
        return False
    return isinstance(exc, OSError | socket.timeout | amqp.exceptions.ConnectionError | EOFError)


def reply_code(exc: BaseException) -> int | None:
    """The AMQP reply code of a driver error (404, 406, ...), if it has one."""
    code = getattr(exc, "reply_code", None) or getattr(exc, "code", None)
    return code if isinstance(code, int) else None


#: TLS errors that mean a dropped connection, not a refused set-up
_SSL_DROPPED = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def map_error(exc: BaseException, params: ConnectionParams) -> TransportError:
    """Our error for a driver error: connection problems are ``TransportUnavailable``
    (the base class retries those); a refused login, vhost or TLS set-up is a
    ``TransportRefused``, never retried."""
    text = params.scrub(f"{type(exc).__name__}: {exc}")
    where = params.describe()
    code = reply_code(exc)
    if code == 403:
        return TransportRefused(
            f"the AMQP broker at {where} refused access ({text}); check the user, its "
            "password and its permissions on the vhost"
        )
    if code == 530:
        return TransportRefused(
            f"the AMQP broker at {where} does not allow this ({text}); check that the "
            "vhost exists and the user may use it"
        )
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, _SSL_DROPPED):
        return TransportRefused(
            f"the AMQP broker at {where} refused the TLS set-up ({text}); check amqps:// "
            "against amqp://, the port and the ssl_* options"
        )
    if is_connection_error(exc):
        return TransportUnavailable(f"the AMQP broker at {where} is unreachable: {text}")
    return TransportError(f"the AMQP broker at {where} refused an operation: {text}")
