"""Task headers: short strings that travel with a task beside its payload (trace context).

DESIGN.md section 2 promises headers that every transport keeps, never inside the
payload the worker sees. Until the transports store headers natively, this module keeps
them in the stored JSON object under one reserved key, ``__asynctask_headers__``, which
core adds at submit and takes out before ``process()`` (and in ``get_task``): every
transport keeps them through retries, dead workers and requeues with no change, because
each stores the JSON text as it is. A payload may not use the reserved key itself.

Plugins add headers at submit through ``asynctask_submit_headers`` and read them from
``asynctask_task_started(headers=...)``; neither depends on where they are stored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

from asynctask.errors import InvalidTaskError

if TYPE_CHECKING:
    from asynctask.transport import Delivery
    from asynctask.validation import Payload

KEY = "__asynctask_headers__"


def attach(payload_text: str, headers: Mapping[str, str]) -> str:
    """``payload_text`` (a compact JSON object) with ``headers`` added under ``KEY``."""
    rest = payload_text[1:]
    head = f'{{"{KEY}":{json.dumps(dict(headers), separators=(",", ":"))}'
    return head + ("" if rest == "}" else ",") + rest


def check_payload(payload: Payload | None) -> None:
    """Refuse a payload that uses the reserved key (call it once the payload is checked)."""
    if payload and KEY in payload:
        raise InvalidTaskError(f"the payload key {KEY!r} is reserved for task headers")


def take(delivery: Delivery) -> None:
    """Move the stored headers out of ``delivery.payload`` into ``delivery.headers``."""
    if KEY in delivery.payload:
        payload = dict(delivery.payload)
        stored = payload.pop(KEY)
        delivery.payload = payload
        if isinstance(stored, dict):
            delivery.headers = {str(k): str(v) for k, v in stored.items()}


def strip(payload: Payload | None) -> Payload | None:
    """``payload`` without the stored headers (for ``get_task``)."""
    if payload is not None and KEY in payload:
        payload = {k: v for k, v in payload.items() if k != KEY}
    return payload
