"""What asynctask keeps on the broker: names, the delay ladder and the message format.

Task queue names follow asynctask's rule (lower-case letters, digits, ``_``), so every
name with a ``.`` below is ours and cannot clash with a task queue.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import amqp

from asynctask.transport import FailedTask, new_task_id
from asynctask.validation import DEFAULT_MAX_PAYLOAD_BYTES, Payload, decode_message

#: a durable queue of task queue names, one message each (``queues()`` reads it)
REGISTRY = "asynctask.registry"

#: Rungs of the delay ladder, in seconds: a delay is rounded up to the next rung.
RUNGS: tuple[float, ...] = (
    0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800,
    43200, 86400, 172800, 345600, 604800,
)  # fmt: skip
#: the longest rung; a longer delay waits on it, then goes round again (see ``DUE``)
MAX_DELAY = RUNGS[-1]
#: the longest delay asked for at all (a year): past it, a schedule is the tool
LONGEST_DELAY = 366 * 24 * 3600.0
#: the two per-queue ladders of earlier versions: delayed tasks, tasks waiting to be retried
LADDERS = ("delay", "retry")
#: A ladder's rungs are declared together, again at most every LADDER_RENEW seconds
#: while in use, and all expire together (x-expires) this long after the last declare:
#: longer than any rung's TTL plus LADDER_RENEW, so a rung never expires holding a task.
#: So the first rung tells whether the whole ladder exists.
LADDER_RENEW = 3600.0
LADDER_EXPIRY_MS = round((MAX_DELAY + 2 * LADDER_RENEW) * 1000)
#: how long a release marker waits for its task to be delivered again
RELEASE_MARKER_EXPIRY_MS = 7 * 24 * 3600 * 1000

# Message headers (AMQP table entries) asynctask writes; all optional on input.
ATTEMPTS = "x-asynctask-attempts"
SUBMITTED_AT = "x-asynctask-submitted-at"
ERROR = "x-asynctask-error"
FAILED_AT = "x-asynctask-failed-at"
RAW = "x-asynctask-raw"
#: Unix time a task delayed past the longest rung is due. It reaches its queue after
#: that rung's week, early; whoever receives it (a consumer, ``get_task``) sends it round
#: the ladder again for the rest of its wait, so a 30-day delay works as on Redis.
DUE = "x-asynctask-due"
#: a task this close to its due time is run rather than sent round again
DUE_SLACK = 1.0


def remaining_wait(received: Received, now: float) -> float:
    """Seconds a received task must still wait (0: it is due)."""
    due = _number(received.headers.get(DUE), float)
    if due is None or due - now <= DUE_SLACK:
        return 0.0
    return float(due - now)


def fit(name: str) -> str:
    """``name``, shortened with a digest if it passes AMQP's 255-byte limit."""
    if len(name.encode()) <= 255:
        return name
    return name.encode()[:200].decode(errors="ignore") + "~" + _sha(name.encode())[:32]


def failed_name(queue: str) -> str:
    """The durable queue that is ``queue``'s failed store."""
    return fit(f"{queue}.failed")


def rung_name(queue: str, ladder: str, rung: float) -> str:
    """``<queue>.delay.<ms>`` or ``<queue>.retry.<ms>``: a rung of the per-queue ladders
    earlier versions declared. Nothing declares them now (the ladder is shared, see
    ``asynctask_amqp.ladder``); the ones that exist dead-letter into their queue until
    they drain and expire, and counts and purges still read them."""
    return fit(f"{queue}.{ladder}.{round(rung * 1000)}")


def rung_names(queue: str, ladder: str) -> list[str]:
    """Every rung queue name of one old per-queue ladder of ``queue``, shortest first."""
    return [rung_name(queue, ladder, rung) for rung in RUNGS]


def rung_for(delay: float) -> float:
    """The rung a delay waits on: the shortest rung not shorter than ``delay``."""
    for rung in RUNGS:
        if rung >= delay:
            return rung
    return MAX_DELAY


def claim_name(key: str) -> str:
    """The queue that stands for a scheduler claim (names are limited to 255 bytes)."""
    return fit(f"asynctask.claim.{key}")


def release_marker(queue: str, task_id: str) -> str:
    """The queue that says "released, not failed" about a task handed back."""
    return fit(f"asynctask.released.{queue}.{task_id}")


def settled_marker(queue: str, task_id: str, attempts: int) -> str:
    """The queue that says "settled by its worker after its connection was lost" about
    the delivery of a task at ``attempts``: its redelivery is dropped, not run again."""
    return fit(f"asynctask.settled.{queue}.{task_id}.{attempts}")


def claim_ttl_ms(ttl: float) -> int:
    """A claim's ``x-expires``: whole milliseconds, at least 1."""
    return max(1, math.ceil(ttl * 1000))


# -- messages ---------------------------------------------------------------------------


def task_message(
    task_id: str,
    body: str | bytes,
    *,
    attempts: int = 0,
    submitted_at: float | None = None,
    extra: dict[str, Any] | None = None,
    priority: int = 0,
) -> Any:
    """A persistent ``application/json`` message carrying one task (with the AMQP
    ``priority`` property above 0: queues declared with ``x-max-priority`` honour it)."""
    headers: dict[str, Any] = {ATTEMPTS: attempts}
    if submitted_at is not None:
        headers[SUBMITTED_AT] = float(submitted_at)
    headers.update(extra or {})
    properties: dict[str, Any] = {"priority": priority} if priority else {}
    return amqp.Message(
        body.encode() if isinstance(body, str) else body,
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=2,
        message_id=task_id,
        timestamp=int(submitted_at or time.time()),
        application_headers=headers,
        **properties,
    )


@dataclass
class Received:
    """A message read back: what asynctask needs of it."""

    id: str
    #: what a release marker names: the message id, else a digest of the message
    key: str
    body: bytes
    payload: Payload | None  # None: undecodable
    error: str | None  # why it could not be decoded
    attempts: int
    submitted_at: float | None
    headers: dict[str, Any]
    #: the AMQP priority property (0 when absent), kept by retries and delays
    priority: int = 0

    @property
    def task_headers(self) -> dict[str, str]:
        """The task's own string headers (its signature), without asynctask's counters."""
        return {
            str(k): v
            for k, v in self.headers.items()
            if isinstance(v, str) and not str(k).startswith("x-asynctask-")
        }

    @property
    def text(self) -> str:
        """The body as text (undecodable bytes replaced)."""
        return self.body.decode("utf-8", errors="replace")

    def copy(self, *, attempts: int, extra: dict[str, Any] | None = None) -> Any:
        """A new message with the same id, body, submit time and task headers (its
        signature), and new counters."""
        return task_message(
            self.id,
            self.body,
            attempts=attempts,
            submitted_at=self.submitted_at,
            extra={**self.task_headers, **(extra or {})},
            priority=self.priority,
        )


def read_message(message: Any, limit: int = DEFAULT_MAX_PAYLOAD_BYTES) -> Received:
    """Read a delivered message, written by asynctask or by any other AMQP client.

    A message without ``message_id`` (a foreign one) gets a new id; a body that is not a
    UTF-8 JSON object, or is over ``limit`` bytes, is kept, with ``payload=None`` and the
    reason in ``error``, whatever the parser raised. An attempt count below 0 (written by
    another program) reads as 0, so no task runs more than ``max_retries + 1`` times.
    """
    body = message.body
    raw = body.encode() if isinstance(body, str) else bytes(body)
    headers = dict(message.properties.get("application_headers") or {})
    payload: Payload | None = None
    error: str | None = None
    try:
        payload = decode_message(raw, limit)
    except ValueError as exc:  # UndecodableMessage: every failure of the parser
        error = f"undecodable message: {exc}"
    message_id = message.properties.get("message_id")
    return Received(
        id=str(message_id or new_task_id()),
        key=str(message_id or _digest(raw, message.properties)),
        body=raw,
        payload=payload,
        error=error,
        attempts=max(0, _number(headers.get(ATTEMPTS), int) or 0),
        submitted_at=_number(headers.get(SUBMITTED_AT), float)
        or _number(message.properties.get("timestamp"), float),
        headers=headers,
        priority=min(9, max(0, _number(message.properties.get("priority"), int) or 0)),
    )


def _digest(body: bytes, properties: dict[str, Any]) -> str:
    """A name for a message that has no id: the same for its every delivery."""
    described = repr(sorted((k, repr(v)) for k, v in properties.items())).encode()
    return "sha256-" + _sha(body + b"\0" + described)[:32]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def failed_message(received: Received, error: str, attempts: int) -> Any:
    """The copy of a task that goes to the failed store."""
    extra = {ERROR: error, FAILED_AT: time.time(), RAW: received.payload is None}
    return received.copy(attempts=attempts, extra=extra)


def read_failed(queue: str, message: Any) -> FailedTask:
    """A failed-store message as a ``FailedTask``."""
    received = read_message(message)
    raw = bool(received.headers.get(RAW)) or received.payload is None
    return FailedTask(
        id=received.id,
        queue=queue,
        payload=None if raw else received.payload,
        raw=received.text if raw else None,
        error=str(
            received.headers.get(ERROR)
            or received.error
            or _dead_lettered(received.headers)
            or "unknown error"
        ),
        attempts=received.attempts,
        submitted_at=received.submitted_at,
        failed_at=_number(received.headers.get(FAILED_AT), float) or 0.0,
    )


def _dead_lettered(headers: dict[str, Any]) -> str | None:
    """Why the broker itself moved a task to the failed store (a quorum queue's
    ``x-delivery-limit``), from its ``x-death`` header; None if it did not."""
    deaths = headers.get("x-death")
    if not isinstance(deaths, list) or not deaths or not isinstance(deaths[0], dict):
        return None
    reason = deaths[0].get("reason")
    if reason == "delivery_limit":
        return (
            "the broker moved it to the failed store: delivered more times than the "
            "queue's x-delivery-limit (URI option delivery_limit)"
        )
    return f"dead-lettered by the broker ({reason})"


def registry_entry(queue: str) -> Any:
    """The registry message that names ``queue``."""
    return amqp.Message(queue.encode(), content_type="text/plain", delivery_mode=2)


def _number(value: Any, kind: type[int] | type[float]) -> Any:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, datetime):  # py-amqp reads table timestamps as naive UTC
        value = value.replace(tzinfo=UTC).timestamp()
    try:
        return kind(value)
    except (TypeError, ValueError, OverflowError):  # int(inf) raises OverflowError
        return None
