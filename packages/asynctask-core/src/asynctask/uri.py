"""Transport URIs: parsing, option reading and password redaction.

A URI is ``scheme:rest`` with an optional ``?name=value`` query. The query holds options;
each transport declares which it accepts and of what type, so a typo is refused with the
list of what is allowed rather than ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from asynctask.errors import InvalidURIError

_PASSWORD = re.compile(r"(?P<head>^[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@?#]*:)(?P<pw>[^@/?#]*)(?=@)")
_QUERY_SECRET = re.compile(r"(?i)(?P<head>[?&](?:password|passwd|pwd)=)(?P<pw>[^&#]*)")


def redact(uri: str) -> str:
    """Return ``uri`` with any password replaced by ``***``: safe for logs, reprs, errors."""
    uri = _PASSWORD.sub(lambda m: m.group("head") + "***", uri)
    return _QUERY_SECRET.sub(lambda m: m.group("head") + "***", uri)


#: schemes whose URI names a server after ``//`` (``pgsql:dbname`` and ``filesys:path``
#: have forms without it; ``unix:`` is ``unix:///path``)
NETWORK_SCHEMES = frozenset({"redis", "rediss", "amqp", "amqps", "redis+cluster", "redis+sentinel"})


def uri_scheme(uri: str) -> str:
    """Return the lower-cased scheme of ``uri``, or raise ``InvalidURIError``."""
    if not isinstance(uri, str) or ":" not in uri:
        raise InvalidURIError(
            f"{redact(str(uri))!r} is not a transport URI: expected 'scheme:...', e.g. "
            "'filesys:/var/lib/asynctask', 'redis://127.0.0.1:6379', 'pgsql:dbname'"
        )
    scheme, rest = uri.split(":", 1)
    scheme = scheme.lower()
    if not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme):
        raise InvalidURIError(f"{redact(uri)!r} has no valid scheme before ':'")
    if scheme in NETWORK_SCHEMES and not rest.startswith("//"):
        # 'redis:/host:6379/5' reads as a path, not a host: say what was meant.
        fixed = f"{scheme}://{rest.lstrip('/')}"
        raise InvalidURIError(
            f"{redact(uri)!r} has one slash after '{scheme}:'; a server is named with two: "
            f"{redact(fixed)!r}"
        )
    return scheme


@dataclass(frozen=True)
class Option:
    """One URI option a transport accepts: its parser, default and a line of help."""

    parse: Callable[[str], Any]
    default: Any
    help: str


def positive_float(text: str) -> float:
    """Parse a number > 0."""
    value = float(text)
    if not value > 0:
        raise ValueError("must be > 0")
    return value


def non_negative_float(text: str) -> float:
    """Parse a number >= 0."""
    value = float(text)
    if not value >= 0:
        raise ValueError("must be >= 0")
    return value


def float_at_least(minimum: float, why: str = "") -> Callable[[str], float]:
    """A parser of numbers >= ``minimum`` (``why`` is added to the error)."""

    def parse(text: str) -> float:
        value = float(text)
        if not value >= minimum:
            raise ValueError(f"must be >= {minimum:g}" + (f" ({why})" if why else ""))
        return value

    return parse


def boolean(text: str) -> bool:
    """Parse true/false, yes/no, on/off, 1/0 (any case)."""
    word = text.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def positive_int(text: str) -> int:
    """Parse a whole number >= 1."""
    value = int(text)
    if value < 1:
        raise ValueError("must be >= 1")
    return value


#: Options every transport accepts, with the same name and meaning everywhere.
COMMON_OPTIONS: Mapping[str, Option] = {
    "retry_timeout": Option(
        positive_float,
        15.0,
        "seconds a call waits and retries while the backend is unreachable before it "
        "raises TransportUnavailable",
    ),
}


def split_query(uri: str) -> tuple[str, list[tuple[str, str]]]:
    """Split ``uri`` into the part before ``?`` and its query pairs."""
    base, _, query = uri.partition("?")
    return base, parse_qsl(query, keep_blank_values=True)


def read_options(
    uri: str,
    pairs: list[tuple[str, str]],
    accepted: Mapping[str, Option],
    passthrough: Callable[[str], bool] = lambda name: False,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Read query pairs against the accepted options.

    Returns ``(options, extra)``: ``options`` has every accepted option (parsed, or its
    default), ``extra`` the pairs that ``passthrough`` lets through to the driver. Any
    other name, or a value that does not parse, raises ``InvalidURIError``.
    """
    allowed = {**COMMON_OPTIONS, **accepted}
    options = {name: option.default for name, option in allowed.items()}
    extra: dict[str, str] = {}
    for name, text in pairs:
        if name in allowed:
            try:
                options[name] = allowed[name].parse(text)
            except ValueError as exc:
                raise InvalidURIError(
                    f"{redact(uri)!r}: option {name}={text!r} is not valid ({exc}); "
                    f"{name}: {allowed[name].help}"
                ) from exc
        elif passthrough(name):
            extra[name] = text
        else:
            raise InvalidURIError(
                f"{redact(uri)!r}: unknown option {name!r}; allowed: {', '.join(sorted(allowed))}"
            )
    return options, extra


def netloc_host_port(uri: str, default_port: int | None) -> tuple[str, int | None]:
    """Return host and port of a ``scheme://host:port`` URI, for error messages."""
    try:
        parts = urlsplit(uri)
        return parts.hostname or "localhost", parts.port or default_port
    except ValueError:
        return "?", default_port
