"""The liveness contract (``asynctask.liveness``) on ``filesys:``."""

from __future__ import annotations

from pathlib import Path

import pytest

from asynctask.testing.liveness import LivenessContract


class TestFilesysLiveness(LivenessContract):
    @pytest.fixture
    def transport_uri(self, tmp_path: Path) -> str:
        return f"filesys:{tmp_path / 'queues'}?lease=2"
