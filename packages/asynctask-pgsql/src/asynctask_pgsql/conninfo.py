"""From a pgsql URI to libpq connection parameters, and the words that name a server in errors.

``pgsql:database`` names a database on the default server (libpq's defaults and ``PG*``
environment variables apply); ``pgsql://...`` is read as the libpq URI
``postgresql://...``; ``postgresql://`` and ``postgres://`` URIs go to libpq as they are,
multi-host lists included. Query options that libpq knows (``sslmode``,
``application_name``...) are passed through; ours are read by the transport.
"""

from __future__ import annotations

import getpass
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from asynctask.errors import InvalidURIError
from asynctask.uri import redact

#: every keyword libpq accepts, so that a typo in a URI option is refused, not ignored
LIBPQ_KEYWORDS = frozenset(o.keyword.decode() for o in psycopg.pq.Conninfo.get_defaults())


@dataclass(frozen=True)
class Server:
    """Where to connect: the full libpq conninfo (secret) and the words for messages."""

    conninfo: str = ""
    host: str = "localhost"
    port: str = "5432"
    dbname: str = ""
    password: str | None = None

    def describe(self) -> str:
        """``PostgreSQL at host:port, database 'x'`` (never the password)."""
        return f"PostgreSQL at {self.host}:{self.port}, database {self.dbname!r}"

    def scrub(self, text: str) -> str:
        """``text`` with the password (and any URI password) replaced by ``***``."""
        if self.password:
            text = text.replace(self.password, "***")
        return redact(text)

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        """A new autocommit connection (psycopg errors are left to the caller to map)."""
        return psycopg.Connection.connect(self.conninfo, autocommit=True, **kwargs)


def read_server(uri: str, location: str, driver_options: dict[str, str], timeout: float) -> Server:
    """Read the part of ``uri`` before ``?`` plus libpq options into a ``Server``.

    ``timeout`` (the transport's retry_timeout) bounds libpq's ``connect_timeout`` unless
    the URI sets it, so that a silent host cannot hang a call.
    """
    rest = location.split(":", 1)[1]
    if rest.startswith("//"):
        base = "postgresql:" + rest
    else:
        base = make_conninfo(dbname=unquote(rest)) if rest else ""
    options: dict[str, Any] = dict(driver_options)
    options.setdefault("connect_timeout", str(max(2, min(10, round(timeout)))))
    options.setdefault("application_name", "asynctask")
    password = _password(location)
    try:
        params = conninfo_to_dict(base, **options)
    except psycopg.Error as exc:
        message = str(exc).strip()
        if password:
            message = message.replace(password, "***")
        raise InvalidURIError(
            f"{redact(uri)!r} is not a PostgreSQL URI libpq accepts: {redact(message)}; "
            "expected e.g. 'pgsql:dbname', 'pgsql://user:password@host:5432/dbname' "
            "or 'postgresql://host/dbname?sslmode=require'"
        ) from None
    for port in str(params.get("port") or "").split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise InvalidURIError(f"{redact(uri)!r}: port {port!r} is not a number from 1 to 65535")
    user = params.get("user") or os.environ.get("PGUSER") or _login()
    return Server(
        conninfo=make_conninfo("", **params),
        host=str(params.get("host") or os.environ.get("PGHOST") or "localhost"),
        port=str(params.get("port") or os.environ.get("PGPORT") or "5432"),
        dbname=str(params.get("dbname") or os.environ.get("PGDATABASE") or user),
        password=str(params["password"]) if params.get("password") else password,
    )


def _password(location: str) -> str | None:
    """The password of a ``//user:password@host`` location, for scrubbing messages."""
    if "//" not in location:
        return None
    userinfo, at, _ = location.split("//", 1)[1].partition("/")[0].rpartition("@")
    if not at or ":" not in userinfo:
        return None
    return unquote(userinfo.split(":", 1)[1]) or None


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "?"


#: What libpq says when a server answered and refused us for good. libpq gives no
#: SQLSTATE for a failed connection, so its (English, stable) texts are all there is.
_REFUSALS = (
    re.compile(r'(role|database) "[^"]*" does not exist'),
    re.compile(r"password authentication failed|authentication failed for user"),
    re.compile(r"no password supplied|password is required|fe_sendauth"),
    re.compile(r"no pg_hba\.conf entry|pg_hba\.conf rejects"),
    re.compile(r"does not support SSL|SSL was required|certificate|sslmode|SSL error: (?!.*EOF)"),
    re.compile(r"permission denied for database|not permitted to log in|invalid \w+ value"),
)


def is_refusal(message: str) -> bool:
    """Whether a connection error means the server refuses us (wrong role, database,
    password, TLS set-up) rather than that it is away (refused, timed out, starting)."""
    return any(pattern.search(message) for pattern in _REFUSALS)
