"""Fixtures for the filesys tests: a probe that reads and writes a root folder directly."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest


def _names(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return [name for name in os.listdir(folder) if not name.startswith(".")]


class FilesysProbe:
    """Counts files in a queue's folders and drops tasks in the documented way."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def stored(self, queue: str) -> int:
        """Files in ready/, delayed/ and every claimed/<owner>/ (failed/ not counted)."""
        q = self.root / queue
        claimed = sum(len(_names(q / "claimed" / owner)) for owner in _names(q / "claimed"))
        return len(_names(q / "ready")) + len(_names(q / "delayed")) + claimed

    def inject(self, queue: str, text: str) -> None:
        """The README's recipe: write under tmp/, then rename into ready/ as STAMP-ID.json."""
        q = self.root / queue
        (q / "tmp").mkdir(parents=True, exist_ok=True)
        (q / "ready").mkdir(exist_ok=True)
        name = f"{time.time_ns():019d}-{uuid.uuid4().hex}.json"
        (q / "tmp" / name).write_bytes(text.encode())
        os.rename(q / "tmp" / name, q / "ready" / name)

    def drop_connections(self) -> None:
        """Files have no connection to drop."""


@pytest.fixture
def make_probe() -> Callable[[Path], FilesysProbe]:
    """Make a probe of a root folder."""
    return FilesysProbe
