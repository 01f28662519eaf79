"""The global limits contract (``asynctask.limits``) on the file system."""

from __future__ import annotations

import pytest

from asynctask.testing.limits import GlobalLimitContract


class TestFilesysLimits(GlobalLimitContract):
    @pytest.fixture
    def transport_uri(self, tmp_path) -> str:
        return f"filesys:{tmp_path / 'queues'}?lease=2"
