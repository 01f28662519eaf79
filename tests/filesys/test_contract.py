"""The shared transport contract on ``filesys:``, in a fresh folder per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from asynctask.testing import TransportContract
from asynctask.testing.contract import SECRET
from asynctask.testing.status import StatusContract
from asynctask.testing.supervised import SupervisedStatusContract


class TestFilesysTransport(TransportContract, StatusContract, SupervisedStatusContract):
    @pytest.fixture
    def transport_uri(self, tmp_path: Path) -> str:
        # A 2 s lease keeps the recovery tests short (recovery_seconds = 2 + 1). A
        # 10 s poll (used only without inotify): a wait not woken by inotify is late.
        return f"filesys:{tmp_path / 'queues'}?lease=2&poll=10"

    @pytest.fixture
    def probe(self, tmp_path: Path, make_probe):
        return make_probe(tmp_path / "queues")

    @pytest.fixture
    def secret_uri(self, tmp_path: Path) -> str:
        # filesys takes no password: the URI is refused, without showing it
        return f"filesys:{tmp_path / 'queues'}?password={SECRET}"
