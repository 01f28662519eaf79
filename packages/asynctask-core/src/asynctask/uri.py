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

# A password in a URI's user info, wherever the URI stands in a text (an error, a log
# line, a command's argument, a JSON dump), and however malformed: ``amqp:/app:pw@h/``,
# ``redis:/:pw@h/5``, ``scheme:user:pw@host``. The password runs to the LAST ``@`` of the
# URI (so one holding ``@`` is hidden whole); more hidden than needed is safe, less is not.
_USERINFO = re.compile(
    r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*:/{0,3}[^\s:/@'\"<>(){}\[\],;]*:)"
    r"(?P<pw>[^\s'\"<>]*)@"
)
# ``name=value`` secrets: URI query options (``?password=``, ``&sslpassword=``) and the
# libpq keyword form (``host=h password=pw``, ``password='p w'``).
_SECRET_NAMES = r"(?:ssl)?password|passwd|pwd|pass|secret|token|api_?key|signing_key"
_KEYWORD = re.compile(
    rf"(?i)(?P<head>(?<![\w.-])(?:[\w.-]*_)?(?:{_SECRET_NAMES})\s*=\s*)"
    r"(?P<pw>'(?:[^'\\]|\\.)*'?|\"(?:[^\"\\]|\\.)*\"?|[^\s&#'\",;]*)"
)
# the same names as JSON keys: ``"password": "pw"``
_JSON_KEY = re.compile(rf'(?i)(?P<head>"(?:{_SECRET_NAMES})"\s*:\s*)(?P<pw>"(?:[^"\\]|\\.)*")')


#: every password ``redact`` has met in this process: a driver that reads a malformed URI
#: its own way may quote the password in a form no pattern knows (libpq takes
#: ``app:p@ss@host`` as user ``app:p`` at host ``ss@host``), so known ones go wherever
_KNOWN: set[str] = set()
#: shorter pieces are not remembered: hiding every "ab" in every text would garble it
_MIN_KNOWN = 4


def remember_secret(secret: str) -> None:
    """Hide ``secret`` (and its longer pieces) in every text ``redact`` sees from now on."""
    secret = secret.strip("'\"")
    for piece in {secret, *re.split(r"[@:/]", secret)}:
        if len(piece) >= _MIN_KNOWN and piece != "***":
            _KNOWN.add(piece)


def _hide(match: re.Match[str], tail: str = "") -> str:
    remember_secret(match.group("pw"))
    return match.group("head") + "***" + tail


def _hide_userinfo(match: re.Match[str]) -> str:
    user = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*:/*", "", match.group("head"))[:-1]
    if match.group("pw") != user:  # "guest:guest": the name shows anyway, keep it readable
        remember_secret(match.group("pw"))
    return match.group("head") + "***@"


def redact(text: str) -> str:
    """Return ``text`` with every password in it replaced by ``***``.

    The one redaction for everything shown to people (errors, log lines, reprs, CLI
    output): it finds URIs and ``name=value`` secrets anywhere in the text, not only at
    its start, and hides every password it has met before wherever it shows again.
    """
    text = _USERINFO.sub(_hide_userinfo, text)
    text = _KEYWORD.sub(_hide, text)
    text = _JSON_KEY.sub(lambda m: m.group("head") + '"***"', text)
    for secret in sorted(_KNOWN, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    return text


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
