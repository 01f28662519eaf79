"""Connections to Redis: the URI read as redis-py reads it, one pool, driver errors mapped.

Commands go straight to a pooled ``Connection`` (``send_command`` / ``read_response``)
rather than through ``redis.Redis``: on a 2-core host that halves the client's cost per
round trip, which is most of the cost of a task. redis-py's own retries are off (a
retried script could run twice); the transport retries, and a consumer resynchronises
its processing list after any error (see ``asynctask_redis.consumer``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    MaxConnectionsError,
    NoPermissionError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.retry import Retry

try:  # redis-py's pure-Python reader, whose buffer ``reply_to`` may fill
    from redis._parsers.socket import SocketBuffer as _SocketBuffer
except ImportError:  # another layout: ``reply_to`` always lets redis-py read
    _SocketBuffer = None  # type: ignore[assignment,misc]

from asynctask.errors import (
    InvalidURIError,
    TransportError,
    TransportRefused,
    TransportUnavailable,
)
from asynctask.uri import Option, float_at_least, positive_float, positive_int, redact
from asynctask_redis.scripts import Script

#: Query options passed through to redis-py as they are (``db`` and TLS settings).
DRIVER_OPTIONS = frozenset(
    {
        "db",
        "client_name",
        "health_check_interval",
        "socket_keepalive",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_check_hostname",
        "ssl_min_version",
    }
)


def non_negative_int(text: str) -> int:
    """A whole number >= 0."""
    value = int(text)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,63}")


def parse_prefix(text: str) -> str:
    """A key prefix: letters, digits, '-' and '.'; never '_' (nor ':')."""
    if "_" in text:
        raise ValueError(
            "a key prefix may not contain '_': queue keys are '<prefix>_<queue>', so "
            "prefix 'a_b' with queue 'c' would share the key 'a_b_c' with prefix 'a' and "
            "queue 'b_c'; use letters, digits, '-' or '.'"
        )
    if not _PREFIX.fullmatch(text):
        raise ValueError("use 1-64 letters, digits, '-' or '.', starting with a letter or digit")
    return text


OPTIONS: Mapping[str, Option] = {
    "key_prefix": Option(
        parse_prefix, "asynctask", "first part of every key (no '_'); default asynctask"
    ),
    "pool_size": Option(positive_int, 50, "most connections this transport opens; default 50"),
    "socket_timeout": Option(
        float_at_least(2, "blocking waits last up to 1 s"),
        10.0,
        "seconds a reply may take before the server counts as gone",
    ),
    "connect_timeout": Option(positive_float, 5.0, "seconds to open a connection; default 5"),
    "recovery_seconds": Option(
        float_at_least(0.5),
        8.0,
        "seconds within which a dead consumer's tasks come back; default 8",
    ),
    "heartbeat_seconds": Option(
        positive_float,
        None,
        "seconds between a live consumer's heartbeats; default recovery_seconds / 8",
    ),
    "wait_replicas": Option(
        non_negative_int,
        0,
        "replicas that must hold a submit, ack, retry or fail before it returns (WAIT); "
        "default 0: none (asynchronous replication)",
    ),
    "wait_timeout_ms": Option(
        positive_int,
        1000,
        "ms a write waits for wait_replicas replicas; default 1000",
    ),
}


class Server:
    """One Redis server as a URI names it: its connection pool and how errors read."""

    def __init__(self, location: str, driver_options: Mapping[str, str], options: Any) -> None:
        scheme = location.split(":", 1)[0].lower()
        try:
            parts = urlsplit(location)
            port = parts.port
        except ValueError as exc:
            raise InvalidURIError(f"{redact(location)!r} is not a valid Redis URI: {exc}") from exc
        if scheme == "unix":
            if not parts.path:
                raise InvalidURIError(
                    f"{redact(location)!r} names no socket: use unix:///path/to/redis.sock?db=N"
                )
            self.where = f"unix socket {unquote(parts.path)}"
        else:
            if parts.path not in ("", "/") and not re.fullmatch(r"/[0-9]+", parts.path):
                raise InvalidURIError(
                    f"{redact(location)!r}: the path of a {scheme}:// URI is the database "
                    "number (redis://host:6379/2); for a Unix socket use "
                    "unix:///path/to/redis.sock?db=N"
                )
            self.where = f"{parts.hostname or 'localhost'}:{port or 6379}"
        self.secret = unquote(parts.password) if parts.password else None
        self.pool_size: int = options["pool_size"]
        url = location + ("?" + urlencode(dict(driver_options)) if driver_options else "")
        try:
            self.pool = redis.ConnectionPool.from_url(
                url,
                max_connections=self.pool_size,
                socket_timeout=options["socket_timeout"],
                socket_connect_timeout=options["connect_timeout"],
                retry=Retry(NoBackoff(), 0),
            )
        except (ValueError, TypeError, RedisError) as exc:
            raise InvalidURIError(
                f"{redact(location)!r} is not a valid Redis URI: {self.scrub(str(exc))}"
            ) from exc

    def pool_for(self, key: str) -> Any:
        """The pool of the server holding ``key``: this one (a cluster routes)."""
        return self.pool

    def moved(self, exc: BaseException) -> bool:
        """Whether ``exc`` says a key may live on another server now (cluster only)."""
        return False

    def scrub(self, text: str) -> str:
        """``text`` with the password, if any, replaced by ``***``."""
        return text.replace(self.secret, "***") if self.secret else text

    def error(self, exc: BaseException) -> TransportError:
        """Our exception for a driver error; ``TransportUnavailable`` is worth retrying."""
        text = self.scrub(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, AuthenticationError | AuthorizationError | NoPermissionError):
            return TransportRefused(
                f"Redis at {self.where} refused the credentials ({text}); "
                "check the user name and password in the URI"
            )
        if isinstance(exc, ResponseError) and "DB index is out of range" in str(exc):
            return TransportRefused(
                f"Redis at {self.where} has no such database ({text}); use a database "
                "number the server has (redis://host:6379/0; see its `databases` setting)"
            )
        if isinstance(exc, redis.ConnectionError) and "SSL" in str(exc):
            return TransportRefused(
                f"Redis at {self.where} refused the TLS set-up ({text}); check rediss:// "
                "against redis://, the port and the ssl_* options"
            )
        if isinstance(exc, MaxConnectionsError):
            return TransportError(
                f"all {self.pool_size} connections to Redis at {self.where} are in use; "
                "raise the URI option pool_size"
            )
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError | OSError):
            return TransportUnavailable(f"Redis at {self.where} is unreachable ({text})")
        if isinstance(exc, BusyLoadingError | ReadOnlyError):
            return TransportUnavailable(f"Redis at {self.where} cannot serve yet ({text})")
        return TransportError(f"Redis at {self.where} answered with an error ({text})")


class Args(list[bytes]):
    """Arguments that are bytes already, last in a command: ``pack`` takes them as they
    are, with no look at each (a consumer's acknowledgements, six a task)."""

    __slots__ = ()


def _encoded(arg: Any) -> bytes:
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, int):
        return b"%d" % arg
    return bytes(arg)


#: ``$<n>`` for the lengths most arguments have
_HEADS = [b"$%d" % n for n in range(4096)]


def pack(commands: Iterable[Sequence[bytes | str | int | Args]]) -> bytes:
    """Commands in the Redis protocol (RESP). Arguments are bytes, str or int only; the
    last may be ``Args``.

    Kept rather than redis-py's client, pipelines and ``Script`` because they cost more
    than the server's work: on one held connection, a command 17,724/s against
    8,397/s through ``redis.Redis``, a 3-command pipeline 20,640/s against 8,020/s, a
    script 18,389/s against 7,418/s (``python -m bench.drivers``, same run, 2 cores).
    The bulk strings are made by C-level loops (``map``, a slice assignment, one
    ``join``), not a Python loop an argument: a ``NEXT`` carrying 32 tracked tasks' acks
    and marks (203 arguments) cost 539k instructions (callgrind) made one by one,
    about 155k now, its acks passed as ``Args``.
    """
    parts: list[bytes] = []
    for command in commands:
        tail = command[-1] if command and type(command[-1]) is Args else None
        head = command[:-1] if tail is not None else command
        data = [a if type(a) is bytes else _encoded(a) for a in head]
        if tail is not None:
            data += tail
        try:
            heads = list(map(_HEADS.__getitem__, map(len, data)))
        except IndexError:  # an argument of 4096 bytes or more
            heads = [b"$%d" % len(a) for a in data]
        # $<n>, data, ..., '' joined by CRLF: every bulk string ends with one
        items = [b""] * (2 * len(data) + 1)
        items[0:-1:2] = heads
        items[1::2] = data
        parts.append(b"*%d\r\n" % len(data))
        parts.append(b"\r\n".join(items))
    return b"".join(parts)


def call(conn: Any, *args: bytes | str | int) -> Any:
    """Send one command on ``conn`` and return its reply."""
    conn.send_packed_command([pack((args,))])
    return conn.read_response()


def run(conn: Any, script: Script, *args: Any) -> Any:
    """Run a script by its SHA1, loading it first if the server does not know it."""
    try:
        return call(conn, "EVALSHA", script.sha, 0, *args)
    except NoScriptError:
        call(conn, "SCRIPT", "LOAD", script.text)
        return call(conn, "EVALSHA", script.sha, 0, *args)


def run_packed(conn: Any, script: Script, packed: bytes) -> Any:
    """``run`` for one ``EVALSHA`` of ``script`` packed by the caller (``reply_to``)."""
    try:
        return reply_to(conn, packed)
    except NoScriptError:
        call(conn, "SCRIPT", "LOAD", script.text)
        return reply_to(conn, packed)


def reply_to(conn: Any, packed: bytes) -> Any:
    """Send one packed command on ``conn`` and return its reply, as ``call`` does.

    An integer reply that comes whole (``:1``: a submit's) is read straight from the
    socket; anything else (an error, another type, a reply in pieces, a closed socket)
    goes to redis-py's parser with the bytes that came, which reads on and raises as
    ``read_response`` does. Kept for the one-by-one submit: ``send_packed_command`` and
    ``read_response`` cost the client 30.5k instructions a call, this 9.9k (``sendall``
    and ``recv`` alone 5.5k; callgrind, 2,000 EVALSHA of PUSH; with the packing of
    ``RedisTransport._push_one`` a submit went from 129.3k to 80.0k, 00bd0fa's 127.9k).
    redis-py's own path is taken whenever this one could skip what it does
    (``own_reading``).
    """
    buffer = own_reading(conn)
    if buffer is None:
        conn.send_packed_command([packed])
        return conn.read_response()
    conn._sock.sendall(packed)
    data = conn._sock.recv(buffer.socket_read_size)
    end = data.find(b"\r\n")
    if data[:1] == b":" and 0 < end == len(data) - 2:  # one command sent: the whole reply
        return int(data[1:end])  # (anything after it, a RESP3 push, goes to the parser)
    kept = buffer._buffer
    kept.write(data)
    kept.seek(0)
    return conn.read_response()


def exec_packed(conn: Any, packed: bytes, n: int, whole: re.Pattern[bytes]) -> None:
    """Send ``MULTI``, ``n`` commands and ``EXEC``, packed by the caller, and raise the
    first error met (a command refused when queued, or one that failed inside EXEC).
    Replies that came whole and as ``whole`` matches (all of them, the expected ones)
    are read here, as ``reply_to`` reads; anything else by redis-py's parser."""
    buffer = own_reading(conn)
    if buffer is None:
        conn.send_packed_command([packed])
        _exec_replies(conn, n)
        return
    conn._sock.sendall(packed)
    data = conn._sock.recv(buffer.socket_read_size)
    if whole.fullmatch(data):
        return
    kept = buffer._buffer
    kept.write(data)
    kept.seek(0)
    _exec_replies(conn, n)


class MultiRefused(ResponseError):
    """``MULTI`` answered with an error (an ACL without ``@transaction``, a proxy, a
    renamed command): the commands written behind it ran alone, outside a transaction.
    Their replies have been read (``replies``: each a value or the error it answered):
    the connection is in step."""

    def __init__(self, message: str, replies: list[Any]) -> None:
        super().__init__(message)
        self.replies = replies


def _exec_replies(conn: Any, n: int) -> list[Any]:
    try:
        conn.read_response()  # MULTI's OK
    except ResponseError as exc:
        replies: list[Any] = []
        for _ in range(n):  # the commands' own replies
            try:
                replies.append(conn.read_response())
            except ResponseError as refused:
                replies.append(refused)
        with contextlib.suppress(ResponseError):  # EXEC's error (no MULTI)
            conn.read_response()
        raise MultiRefused(str(exc), replies) from exc
    for _ in range(n):  # QUEUED: an error raises (EXEC's too)
        conn.read_response()
    found = conn.read_response()
    if not isinstance(found, list):  # no WATCH here: never a null EXEC
        raise ResponseError(f"EXEC answered {found!r}")
    for item in found:
        if isinstance(item, ResponseError):
            raise item
    return found


def own_reading(conn: Any) -> Any:
    """redis-py's reader's buffer when ``reply_to`` may read the socket itself, or None:
    no socket yet, a health check due (``health_check_interval``), another parser
    (hiredis), bytes already buffered."""
    buffer = getattr(conn._parser, "_buffer", None)
    if conn._sock is None or conn.health_check_interval or type(buffer) is not _SocketBuffer:
        return None
    kept = buffer._buffer
    at = kept.tell()
    if kept.seek(0, 2):  # its end: 0 when nothing is buffered
        kept.seek(at)  # redis-py's parser reads on from where it was
        return None
    return buffer


def pipeline(conn: Any, commands: Sequence[Sequence[bytes | str | int]]) -> list[Any]:
    """Send several commands in one write and read every reply; raise the first error."""
    conn.send_packed_command([pack(commands)])
    replies: list[Any] = []
    first: ResponseError | None = None
    for _ in commands:
        try:
            replies.append(conn.read_response())
        except ResponseError as exc:  # the connection stays in step: read on
            first = first or exc
            replies.append(exc)
    if first is not None:
        raise first
    return replies


class SentinelServer(Server):
    """The master of a Sentinel service: ``redis+sentinel://host:port[,host:port]/name``.

    redis-py's ``SentinelConnectionPool`` asks the Sentinels for the master at every new
    connection and drops one that finds its server demoted (a failover), so the
    transport's usual reconnect-and-retry follows the master.
    """

    def moved(self, exc: BaseException) -> bool:
        """A dropped connection may mean a failover: a consumer's own connection is then
        given back and a new one taken from the pool, which asks the Sentinels. (redis-py
        8 reconnects a dropped ``SentinelManagedConnection`` to its old address: a
        consumer that reused it would knock on a dead master until ``retry_timeout``.)"""
        return isinstance(exc, redis.ConnectionError | redis.TimeoutError | OSError | ReadOnlyError)

    def __init__(self, location: str, driver_options: Mapping[str, str], options: Any) -> None:
        from redis.sentinel import Sentinel, SentinelConnectionPool

        try:
            parts = urlsplit(location)
        except ValueError as exc:
            raise InvalidURIError(f"{redact(location)!r} is not a valid URI: {exc}") from exc
        service = parts.path.strip("/")
        if not service or "/" in service:
            raise InvalidURIError(
                f"{redact(location)!r} names no service: use "
                "redis+sentinel://host:26379[,host:26379]/service_name"
            )
        sentinels: list[tuple[str, int]] = []
        for item in parts.netloc.rsplit("@", 1)[-1].split(","):
            host, _, port = item.strip().rpartition(":")
            if not host or not port.isdigit():
                raise InvalidURIError(
                    f"{redact(location)!r}: name each Sentinel as host:port, e.g. "
                    "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster"
                )
            sentinels.append((host, int(port)))
        self.where = (
            f"Sentinel service {service!r} (" + ",".join(f"{h}:{p}" for h, p in sentinels) + ")"
        )
        self.secret = unquote(parts.password) if parts.password else None
        self.pool_size = options["pool_size"]
        extra: dict[str, Any] = {}
        if "client_name" in driver_options:
            extra["client_name"] = driver_options["client_name"]
        if "db" in driver_options:
            extra["db"] = int(driver_options["db"])
        if parts.username:
            extra["username"] = unquote(parts.username)
        self.sentinel = Sentinel(  # type: ignore[no-untyped-call]
            sentinels,
            socket_timeout=options["connect_timeout"],
            socket_connect_timeout=options["connect_timeout"],
        )
        self.pool = SentinelConnectionPool(  # type: ignore[no-untyped-call]
            service,
            self.sentinel,
            password=self.secret,
            socket_timeout=options["socket_timeout"],
            socket_connect_timeout=options["connect_timeout"],
            max_connections=self.pool_size,
            retry=Retry(NoBackoff(), 0),
            **extra,
        )
