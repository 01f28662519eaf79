"""Reading payloads out of rows: as text, decoded by us, one row at a time.

psycopg decodes ``jsonb`` inside ``fetchall()``: one row another program inserted nested
3,000 deep (``RecursionError``) or with a 5,000-digit number (a bare ``ValueError``) made
the whole fetch raise, and the good rows reserved by the same statement were charged an
attempt each time without ever running. So our connections load ``jsonb`` as its text,
and each row is decoded on its own (``Transport.decode``): a bad one goes to the failed
store alone.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg.types.json import set_json_loads


def _text(data: Any) -> str:
    return bytes(data).decode("utf-8", errors="replace")


def load_json_as_text(conn: psycopg.Connection[Any]) -> None:
    """Make ``conn`` return ``json``/``jsonb`` values as their text, undecoded."""
    set_json_loads(_text, conn)


def read_headers(text: str | None) -> dict[str, str]:
    """A row's ``headers`` column (JSON text) as string headers; anything else, which
    only another program could have written, reads as no headers (so a signed worker
    refuses the task as unsigned, and nothing raises)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except Exception:
        return {}
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}
