"""Signed tasks (DESIGN.md section 10): HMAC-SHA256 over what a task is, in a header.

With ``asynctask_signing_key`` set, every submit adds the header ``asynctask-signature``:
``v1=`` and the hex HMAC-SHA256, under the first key, of::

    <queue name> LF <task id> LF <canonical JSON of the payload>

where the canonical JSON has sorted keys, compact separators (``,`` and ``:``) and UTF-8
text (no ``\\uXXXX`` escapes but those JSON needs), so a store that rewrites JSON (jsonb
reorders keys) does not break it. A worker holding the keys checks it before it runs a
task: a task unsigned, or signed by no key of the list, goes to the failed store unrun.
The list allows rotation: the first key signs, every key verifies.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from typing import Any

#: the header that carries a task's signature
SIGNATURE = "asynctask-signature"
_VERSION = "v1="


def canonical_json(payload: Mapping[str, Any]) -> bytes:
    """The payload as signed: sorted keys, compact separators, UTF-8."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def signature(key: str, queue: str, task_id: str, payload: Mapping[str, Any]) -> str:
    """The header value for a task signed with ``key``."""
    message = queue.encode() + b"\n" + task_id.encode() + b"\n" + canonical_json(payload)
    return _VERSION + hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def sign(
    keys: Sequence[str], queue: str, task_id: str, payload: Mapping[str, Any]
) -> dict[str, str]:
    """The headers that sign a task: none without keys, else the first key's signature."""
    if not keys:
        return {}
    return {SIGNATURE: signature(keys[0], queue, task_id, payload)}


def problem(
    keys: Sequence[str],
    queue: str,
    task_id: str,
    payload: Mapping[str, Any],
    headers: Mapping[str, Any],
) -> str | None:
    """Why a delivered task must not run (unsigned, or signed by no key), or None."""
    if not keys:
        return None
    given = headers.get(SIGNATURE)
    if not isinstance(given, str) or not given:
        return (
            "unsigned task: this worker holds asynctask_signing_key and runs signed tasks "
            f"only (header {SIGNATURE!r}); not run"
        )
    for key in keys:
        if hmac.compare_digest(given, signature(key, queue, task_id, payload)):
            return None
    return (
        f"bad signature: header {SIGNATURE!r} matches no key of asynctask_signing_key for "
        "this queue, task id and payload; not run"
    )
