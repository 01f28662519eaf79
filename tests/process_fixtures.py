"""Fixtures for tests that run real ``asynctask workers`` processes on every transport."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from asynctask.testing import (
    FAST_CHECKS,
    clean_environment,
    require_service,
    unique_queue,
    workers_command,
)
from asynctask.testing.supervised import Supervisor
from backends import BACKENDS


@pytest.fixture(params=sorted(BACKENDS))
def backend_uri(request, tmp_path) -> str:
    """A transport URI, once per installed transport."""
    make, check = BACKENDS[request.param]
    if check is not None:
        require_service(request.param, check)
    return make(tmp_path)


@pytest.fixture
def filesys_uri(tmp_path) -> str:
    """The embedded transport, for tests that are about the command, not the backend."""
    return f"filesys:{tmp_path / 'queues'}"


@pytest.fixture
def queue() -> str:
    return unique_queue("w")


@pytest.fixture
def ledger(tmp_path) -> Path:
    return tmp_path / "ledger.jsonl"


class Workers(Supervisor):
    """A running ``asynctask workers`` command (``children``, ``stop`` and ``kill`` as
    the contract's supervised tests have them)."""

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def output(self) -> str:
        assert self.process.stderr is not None
        return self.process.stderr.read()

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)


@pytest.fixture
def start_workers(tmp_path) -> Iterator[Callable[..., Workers]]:
    """Start ``asynctask workers`` with a transport and ``asynctask_workers``."""
    started: list[Workers] = []

    def start(
        uri: str, workers: dict[str, Any], *args: str, settings: dict[str, Any] | None = None
    ) -> Workers:
        command = workers_command(uri, workers, *args, settings={**FAST_CHECKS, **(settings or {})})
        env = clean_environment()
        process = subprocess.Popen(
            command, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env
        )
        handle = Workers(process)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        if handle.process.poll() is None:
            for pid in handle.children():
                _kill(pid)
            handle.process.kill()
            handle.process.wait()
        if handle.process.stderr is not None:
            handle.process.stderr.close()


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
