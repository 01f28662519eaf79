"""Helpers of the command-line tests: running ``asynctask`` and a Redis server of our own."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from asynctask.testing import clean_environment, require_service
from support import free_port, start_redis_server

PASSWORD = "s3cret-pw"


@dataclass
class Result:
    """A finished ``asynctask`` command."""

    code: int
    out: str
    err: str
    seconds: float


def run_asynctask(
    *args: str, uri: str | None = None, cwd: Path | None = None, timeout: float = 60, **env: str
) -> Result:
    """Run ``python -m asynctask ARGS`` (with ``--set asynctask_transport=URI``)."""
    command = [sys.executable, "-m", "asynctask", *args]
    if uri is not None:
        command += ["--set", f"asynctask_transport={uri}"]
    started = time.monotonic()
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=clean_environment(**env),
        stdin=subprocess.DEVNULL,
    )
    return Result(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


@dataclass
class OwnRedis:
    """A redis-server of this test's own (so a test may stop it or change its password)."""

    port: int
    process: subprocess.Popen[bytes] | None = None

    def uri(self, password: str | None = PASSWORD) -> str:
        auth = f":{password}@" if password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = start_redis_server(
            self.port, ["--save", "", "--appendonly", "no", "--requirepass", PASSWORD], PASSWORD
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


def _installed(program: str) -> None:
    if shutil.which(program) is None:
        raise FileNotFoundError(f"{program} is not on PATH")


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    """A password-protected redis-server on a free port, stopped after the test."""
    require_service("redis-server", lambda: _installed("redis-server"))
    server = OwnRedis(free_port())
    server.start()
    yield server
    server.stop()


def fake_distribution(
    folder: Path,
    name: str,
    entry_points: dict[str, dict[str, str]],
    modules: dict[str, str] | None = None,
    version: str = "0.1",
) -> Path:
    """A distribution installed by hand: a dist-info with entry points, plus modules.

    Put ``folder`` on PYTHONPATH of a subprocess and importlib.metadata finds it as if
    pip had installed it; nothing is installed in the test's own environment.
    """
    folder.mkdir(parents=True, exist_ok=True)
    info = folder / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    for group, entries in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{key} = {value}" for key, value in entries.items()]
        lines.append("")
    (info / "entry_points.txt").write_text("\n".join(lines))
    for module, text in (modules or {}).items():
        (folder / f"{module}.py").write_text(text)
    return folder
