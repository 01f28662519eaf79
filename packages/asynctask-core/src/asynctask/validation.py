"""Queue-name and payload rules, checked before anything is written.

The rules are the original's (``rex.asynctask``), with clearer errors: a queue name is
two or more lower-case letters, digits and single underscores, starting with a letter
and ending with a letter or digit; a payload is a JSON object that travels as JSON text.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from asynctask.errors import InvalidTaskError

#: the longest queue name, on every transport (AMQP's names stop at 255 bytes, and a
#: queue's own names, like ``<queue>.failed``, need room beside it)
MAX_QUEUE_NAME = 100
QUEUE_NAME_RULE = (
    f"2 to {MAX_QUEUE_NAME} characters: lower-case letters, digits and single underscores, "
    "starting with a letter and ending with a letter or digit (e.g. 'foo', 'a1', 'rex_job_0')"
)
#: the default of ``asynctask_max_payload_bytes``: the largest payload, as JSON text
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
_QUEUE_NAME = re.compile(r"^[a-z](?:[a-z0-9]|_(?!_))*[a-z0-9]$")

Payload = dict[str, Any]
#: how deep a payload may nest (JSON parsers in other languages have limits too)
MAX_DEPTH = 500


def is_valid_queue_name(name: object) -> bool:
    """Tell whether ``name`` follows the queue-name rule."""
    return (
        isinstance(name, str)
        and len(name) <= MAX_QUEUE_NAME
        and _QUEUE_NAME.match(name) is not None
    )


#: names found valid, so that a process submitting to the same queues checks each once
#: (the rule's regex cost a one-by-one submit 11k of its instructions, callgrind)
_valid_names: set[str] = set()


def check_queue_name(name: object) -> str:
    """Return ``name`` if it is a valid queue name, else raise ``InvalidTaskError``."""
    if type(name) is str and name in _valid_names:
        return name
    if not is_valid_queue_name(name):
        shown = f"{name!r:.120}" + ("..." if len(repr(name)) > 120 else "")
        if isinstance(name, str) and len(name) > MAX_QUEUE_NAME:
            shown += f" ({len(name)} characters)"
        raise InvalidTaskError(f"{shown} is not a valid queue name: use {QUEUE_NAME_RULE}")
    assert isinstance(name, str)
    if type(name) is str:  # a str subclass may hash as it likes: checked every time
        if len(_valid_names) >= 10_000:
            _valid_names.clear()  # bounded, whatever names a process makes up
        _valid_names.add(name)
    return name


def _check_json_value(value: object, where: str, depth: int) -> None:
    # Walk the value ourselves so the error names the offending key; json.dumps would
    # only say "Object of type X is not JSON serializable".
    if depth > MAX_DEPTH:
        raise InvalidTaskError(
            f"payload is nested too deeply at {where[:80]}... (limit {MAX_DEPTH} levels)"
        )
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidTaskError(
                f"payload value at {where} is {value!r}; JSON allows only finite numbers"
            )
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json_value(item, f"{where}[{index}]", depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidTaskError(
                    f"payload key {key!r} at {where} is a {type(key).__name__}; "
                    "JSON object keys must be str"
                )
            _check_json_value(item, f"{where}[{key!r}]", depth + 1)
        return
    raise InvalidTaskError(
        f"payload value at {where} is a {type(value).__name__} ({value!r:.60}); "
        "use JSON types only: dict, list, str, int, float, bool, None"
    )


def check_payload(payload: object) -> Payload:
    """Return the payload as a dict (``None`` becomes ``{}``), or raise ``InvalidTaskError``."""
    if payload is None:
        return {}
    if not isinstance(payload, Mapping):
        raise InvalidTaskError(
            f"a payload must be a JSON object (a dict with str keys), not a "
            f"{type(payload).__name__}: {payload!r:.80}"
        )
    _check_json_value(payload, "payload", 0)
    return dict(payload)


def _refuse(value: object) -> object:
    raise TypeError(type(value).__name__)


#: the containers a payload nests: a tuple made once (``dict | list`` in the loop built
#: a ``types.UnionType`` at each test, and ``isinstance`` of one is slower: 5.8k
#: instructions for a flat two-key payload against 4.3k, callgrind)
_NESTED = (dict, list)


def _str_keys_only(value: object) -> bool:
    """Whether every object key is a str, nesting at most ``MAX_DEPTH`` levels.

    json.dumps turns int, float, bool and None keys into strings without a word; we refuse
    them, so the keys of every object are checked (values were checked by dumps). A loop,
    not recursion, so a deep payload costs no stack.
    """
    if type(value) is dict:  # the common payload, flat: no walk
        nested = False
        for key, item in value.items():
            if not isinstance(key, str):
                return False
            if isinstance(item, _NESTED):
                nested = True
        if not nested:
            return True
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return False
        if isinstance(item, dict):
            if not all(isinstance(k, str) for k in item):
                return False
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, _NESTED))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, _NESTED))
    return True


# The payload encoder, made once: ``json.dumps`` with options builds a ``JSONEncoder`` at
# every call, and its ``encode`` a C encoder: 22.5k instructions for ``{"n": 1}`` against
# 6.4k for the C encoder kept (callgrind). Without ``_json`` (another Python), the kept
# ``JSONEncoder``. No circular-reference markers: a loop ends in RecursionError, which
# sends the payload to ``check_payload`` (it names the depth), as a too-deep one does.
_ENCODER = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_refuse
)
_make_c_encoder = getattr(json.encoder, "c_make_encoder", None)
_c_encoder = (
    None
    if _make_c_encoder is None
    else _make_c_encoder(
        None, _refuse, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )
)


def _dumps(payload: dict[Any, Any]) -> str:
    """``payload`` as compact JSON text, refusing NaN, infinities and non-JSON types."""
    if _c_encoder is None:
        return _ENCODER.encode(payload)
    return "".join(_c_encoder(payload, 0))


def encode_payload(payload: object) -> str:
    """Check a payload and return its JSON text (compact, UTF-8 safe).

    The common case costs one C-level ``json.dumps`` and a walk over the keys; only a
    payload that fails it is walked again to name the offending key in the error.
    """
    if payload is None:
        return "{}"
    if type(payload) is dict:
        try:
            text = _dumps(payload)
        except (TypeError, ValueError, RecursionError):
            pass
        else:
            if _str_keys_only(payload):
                return text
    return json.dumps(check_payload(payload), separators=(",", ":"), ensure_ascii=False)


#: ``json.loads``'s own parser without its Python layers (an encoding guess, two
#: whitespace regexes, three calls): a worker decodes every task, and those layers cost
#: two thirds of a small payload's decode (17,000 instructions against 5,200, callgrind)
_scan: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def decode_payload(text: str | bytes) -> Payload:
    """Read a payload from JSON text; raise ``ValueError`` when it is not a JSON object."""
    if type(text) is str:
        try:
            found, end = _scan(text, 0)
        except Exception:  # json.loads below says what is wrong, in its words
            pass
        else:
            if end == len(text) and type(found) is dict:
                return found
    # whitespace around the value, not an object, or not JSON: the full parser decides
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got a JSON {type(value).__name__}")
    return value


class UndecodableMessage(ValueError):
    """A stored message that is not a task we can run: the text says why.

    Raised for any failure to read a message (bad UTF-8 or JSON, nesting deeper than the
    parser's stack, a number past Python's digit limit, a value that is not an object, a
    size over the limit), so that a transport's decode path needs to catch only this one.
    """


def check_payload_size(text: str, limit: int) -> None:
    """Refuse payload text over ``limit`` bytes, naming its size and the setting."""
    # Characters first: a str of n characters is at least n bytes, and most payloads are far
    # under the limit, so the common case costs no encoding.
    if len(text) * 4 > limit and len(text.encode()) > limit:
        raise InvalidTaskError(
            f"payload is {len(text.encode())} bytes of JSON, over the limit of {limit} bytes "
            "(setting asynctask_max_payload_bytes); store big data elsewhere and pass its "
            "location"
        )


def decode_message(data: str | bytes, limit: int = DEFAULT_MAX_PAYLOAD_BYTES) -> Payload:
    """Read a stored message's payload; raise ``UndecodableMessage`` whatever goes wrong.

    Text over ``limit`` bytes is refused before it is parsed, so a huge message costs no
    parse. Another program may have written anything, so every exception of the parser is
    turned into the one error a transport catches (``RecursionError`` is not a
    ``ValueError``, and the 4,300-digit limit on ints raises a bare ``ValueError``).
    """
    size = len(data)
    if type(data) is str:
        if size * 4 > limit:
            size = len(data.encode())
        else:
            # decode_payload's fast path inline: every task of every transport comes
            # here, and the call it saves was ~1k instructions of a no-op task
            try:
                found, end = _scan(data, 0)
            except Exception:  # the full path below says what is wrong
                pass
            else:
                if end == size and type(found) is dict:
                    return found
    if size > limit:
        raise UndecodableMessage(
            f"message is {size} bytes, over the limit of {limit} bytes "
            "(setting asynctask_max_payload_bytes)"
        )
    try:
        # UTF-8 only: json.loads would guess UTF-16 or -32 from a byte string's start
        return decode_payload(data.decode("utf-8") if isinstance(data, bytes) else data)
    except RecursionError:
        raise UndecodableMessage("JSON nested too deeply to decode") from None
    except UnicodeDecodeError as exc:
        raise UndecodableMessage(f"not UTF-8 text: {exc}") from None
    except Exception as exc:
        raise UndecodableMessage(str(exc) or type(exc).__name__) from None
