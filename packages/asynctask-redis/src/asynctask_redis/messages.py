"""The texts the redis transport stores: task envelopes and failed records.

An envelope is one JSON object, written by us always in this exact form (the header
order is fixed so that a Lua script can raise ``attempts`` without re-encoding the
payload)::

    {"__asynctask__":1,"id":"<id>","attempts":<n>,"submitted_at":<s>,"payload":<object>}

(``<s>``: seconds since the epoch, or ``null``). A task with headers (its signature) has
``"headers":{"<name>":"<value>",...},`` just before ``"payload"``.

Any other JSON object in a queue is a task whose payload is that object as it is, so
``RPUSH asynctask_some_queue '{"foo": 1}'`` submits ``{"foo": 1}``. The key
``__asynctask__`` is reserved: an object that has it is read as an envelope.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from asynctask.transport import FailedTask, new_task_id
from asynctask.validation import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    Payload,
    UndecodableMessage,
    decode_message,
)

MARKER = "__asynctask__"
#: json's own parser without its Python layers (as ``asynctask.validation`` uses it)
_scan: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_ID = re.compile(r"[0-9A-Za-z-]{1,64}")
_HEAD = re.compile(
    rb'\{"__asynctask__":1,"id":"([0-9A-Za-z-]{1,64})","attempts":([0-9]{1,9}),'
    rb'"submitted_at":(null|-?[0-9][0-9.eE+-]{0,30}),(?:"headers":(\{[^{}]{0,4096}\}),)?'
    rb'"payload":'
)


@dataclass(slots=True)
class Message:
    """A task as read from a queue; ``raw`` is the exact stored text (the receipt).

    Never changed once made (``dataclasses.replace`` makes another). Not ``frozen``: its
    ``__init__`` would cost four times as much (14,500 instructions, callgrind), once a
    task.
    """

    raw: bytes
    id: str
    attempts: int
    submitted_at: float | None
    payload: Payload
    payload_text: bytes
    #: an envelope another program wrote in another layout: rewrite it before use
    rewrite: bool
    #: string headers stored beside the payload (its signature)
    headers: dict[str, str] = field(default_factory=dict)


def envelope(
    task_id: str,
    attempts: int,
    submitted_at: float | None,
    payload_text: str,
    headers: dict[str, str] | None = None,
) -> str:
    """Our envelope text around an already encoded payload."""
    when = "null" if submitted_at is None else repr(float(submitted_at))
    extra = ""
    if headers:
        extra = '"headers":' + json.dumps(headers, separators=(",", ":")) + ","
    return (
        f'{{"{MARKER}":1,"id":"{task_id}","attempts":{attempts},'
        f'"submitted_at":{when},{extra}"payload":{payload_text}}}'
    )


def _headers(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise UndecodableMessage(f"envelope headers must map strings to strings: {value!r:.80}")
    return value


def read_message(raw: bytes, limit: int = DEFAULT_MAX_PAYLOAD_BYTES) -> Message:
    """Read a stored message; ``ValueError`` when it is not a task we can run (whatever
    the parser raised), or when it is over ``limit`` bytes."""
    if len(raw) > limit:
        raise UndecodableMessage(
            f"message is {len(raw)} bytes, over the limit of {limit} bytes "
            "(setting asynctask_max_payload_bytes)"
        )
    head = _HEAD.match(raw)
    if head is not None and raw.endswith(b"}"):
        task_id, attempts, stamp, headers = head.groups()
        start = head.end()
        text = raw[start:-1]
        payload = None
        if headers is None:  # an ASCII head: its length in bytes is its length in text
            # json's scanner on the whole text from the payload on, one C call: the
            # generic decode (``decode_message``: a slice decoded, three Python frames)
            # cost a tracked drain about 2k instructions a task; whatever it refuses
            # (not UTF-8, not an object, anything after it) that decode reads and names
            try:
                whole = raw.decode()
                payload, end = _scan(whole, start)
            except Exception:
                payload = None
            else:
                if end != len(whole) - 1 or type(payload) is not dict:
                    payload = None
        return Message(
            raw,
            task_id.decode(),
            int(attempts),
            None if stamp == b"null" else float(stamp),
            # the size was checked on the whole message
            decode_message(text, len(text)) if payload is None else payload,
            text,
            False,
            _headers(_loads(headers)) if headers else {},
        )
    value = _loads(raw)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got a JSON {type(value).__name__}")
    if MARKER not in value:
        # a foreign producer's plain object: the payload as it is, a fresh id
        return Message(raw, new_task_id(), 0, None, value, raw.strip(), rewrite=False)
    return _foreign_envelope(raw, value)


def _foreign_envelope(raw: bytes, value: dict[str, Any]) -> Message:
    task_id, attempts = value.get("id", new_task_id()), value.get("attempts", 0)
    payload, submitted_at = value.get("payload"), value.get("submitted_at")
    if not isinstance(task_id, str) or not _ID.fullmatch(task_id):
        raise ValueError(f"envelope id must be 1-64 letters, digits or '-', got {task_id!r}")
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
        raise ValueError(f"envelope attempts must be an integer >= 0, got {attempts!r}")
    if not isinstance(payload, dict):
        raise ValueError(f"envelope payload must be a JSON object, got {payload!r:.60}")
    if submitted_at is not None and (
        isinstance(submitted_at, bool) or not isinstance(submitted_at, int | float)
    ):
        raise ValueError(f"envelope submitted_at must be a number, got {submitted_at!r}")
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    stamp = None if submitted_at is None else float(submitted_at)
    headers = _headers(value.get("headers"))
    return Message(raw, task_id, attempts, stamp, payload, text, rewrite=True, headers=headers)


def canonical_text(message: Message, attempts: int | None = None) -> str:
    """The message as our envelope, optionally with another attempt count."""
    return envelope(
        message.id,
        message.attempts if attempts is None else attempts,
        message.submitted_at,
        message.payload_text.decode(),
        message.headers,
    )


def failed_record(
    message: Message | None, raw: bytes | None, error: str, attempts: int, failed_at: float
) -> str:
    """A failed store entry: JSON with the task's id, error, counts, times, and payload
    (verbatim) or, for an undecodable message, its raw text."""
    meta: dict[str, Any] = {
        "id": message.id if message else new_task_id(),
        "error": error,
        "attempts": attempts,
        "submitted_at": message.submitted_at if message else None,
        "failed_at": failed_at,
        "raw": None if raw is None else raw.decode("utf-8", "replace"),
    }
    head = json.dumps(meta, separators=(",", ":"), ensure_ascii=False)[:-1]
    payload = message.payload_text.decode() if message else "null"
    return f'{head},"payload":{payload}}}'


def read_failed(queue: str, raw: bytes) -> FailedTask:
    """A failed store entry as a ``FailedTask`` (a damaged entry is shown as raw text)."""
    try:
        value = _loads(raw)
        payload = value["payload"]
        return FailedTask(
            id=str(value["id"]),
            queue=queue,
            payload=payload if isinstance(payload, dict) else None,
            raw=value.get("raw"),
            error=str(value["error"]),
            attempts=int(value["attempts"]),
            submitted_at=value.get("submitted_at"),
            failed_at=float(value["failed_at"]),
        )
    except (ValueError, TypeError, KeyError) as exc:
        text = raw.decode("utf-8", "replace")
        error = f"unreadable failed-store entry: {exc}"
        return FailedTask(_record_id(raw), queue, None, text, error, 0, None, 0.0)


def requeue_text(task: FailedTask, sign: Callable[[str], dict[str, str]]) -> str:
    """What goes back to the queue for a failed task: its envelope with attempts reset
    and the headers ``sign`` gives for its payload text, or the raw text it had."""
    if task.payload is None:
        return task.raw or ""
    text = json.dumps(task.payload, separators=(",", ":"), ensure_ascii=False)
    return envelope(task.id, 0, task.submitted_at, text, sign(text))


def _record_id(raw: bytes) -> str:
    import hashlib

    return hashlib.sha1(raw).hexdigest()[:32]


def _loads(raw: bytes) -> Any:
    # Another program wrote it: any failure of the parser is "undecodable", not a crash.
    try:
        return json.loads(raw)
    except RecursionError:
        raise UndecodableMessage("JSON nested too deeply to decode") from None
    except Exception as exc:
        raise UndecodableMessage(str(exc) or type(exc).__name__) from None
