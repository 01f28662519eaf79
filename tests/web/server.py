"""A real ``asynctask web`` process for the browser and command tests."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from asynctask.testing import clean_environment
from support import free_port, wait_for


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # it answered (401 and such)
    except OSError:
        return False


class WebServer:
    """A running ``asynctask web``."""

    def __init__(self, uri: str, tmp_path: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "asynctask", "web", "--port", str(self.port),
             "--set", f"asynctask_transport={uri}", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            cwd=tmp_path, env=clean_environment(),
        )  # fmt: skip
        wait_for(lambda: answers(self.url + "/static/style.css"), 30, "asynctask web to answer")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        assert self.process.stdout is not None
        self.process.stdout.close()
