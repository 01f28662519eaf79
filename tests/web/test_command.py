"""``asynctask web`` as a user starts it: found through the plugin's entry point, bound
to loopback by default, refusing a wider bind without a token."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from asynctask.testing import clean_environment
from support import free_port, wait_for
from tests.web.server import WebServer

ROOT = Path(__file__).resolve().parents[2]


def run_web(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asynctask", "web", *args],
        capture_output=True, text=True, timeout=timeout, env=clean_environment(),
    )  # fmt: skip


def get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:  # nothing listens (yet)
        return 0, ""


def test_web_is_a_plugin_distribution_found_through_its_entry_point():
    [ep] = [e for e in md.entry_points(group="asynctask") if e.name == "web"]
    assert ep.value == "asynctask_web.plugin"
    assert ep.dist is not None and ep.dist.metadata["Name"] == "asynctask-web"
    shown = subprocess.run(
        [sys.executable, "-m", "asynctask", "--help"],
        capture_output=True, text=True, env=clean_environment(),
    )  # fmt: skip
    assert " web " in shown.stdout.replace("│", " ")
    # and asynctask --help imports neither Starlette nor uvicorn
    code = (
        "import sys\nfrom asynctask.cli import main\n"
        "sys.argv = ['asynctask', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('starlette', 'uvicorn', 'jinja2') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr


def test_a_bind_beyond_loopback_without_a_token_refuses_to_start(tmp_path):
    port = free_port()
    started = time.monotonic()
    refused = run_web("--host", "0.0.0.0", "--port", str(port),
                      "--set", f"asynctask_transport=filesys:{tmp_path}")  # fmt: skip
    assert refused.returncode == 2
    assert "without a token" in refused.stderr and "asynctask_web_token" in refused.stderr
    assert time.monotonic() - started < 20
    with socket.socket() as probe:  # and nothing listens
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    short = run_web("--host", "0.0.0.0", "--token", "short")
    assert short.returncode == 2 and "16 characters" in short.stderr
    assert "short" not in short.stderr.replace("16 characters", "")


def test_beyond_loopback_with_a_token_it_serves_only_who_gives_it(tmp_path):
    token = "a-token-of-the-command-test"
    server = WebServer(
        f"filesys:{tmp_path / 'queues'}", tmp_path, "--host", "0.0.0.0",
        "--set", f"asynctask_web_token={token}",
    )  # fmt: skip
    try:
        assert get(server.url + "/api/queues")[0] == 401
        status, body = get(server.url + "/api/queues", token)
        assert status == 200 and json.loads(body)["queues"] == []
        status, body = get(server.url + "/api/settings", token)
        assert status == 200 and token not in body and "***" in body
    finally:
        server.stop()


@pytest.mark.slow
def test_pip_install_then_asynctask_web_serves_the_configured_transport(tmp_path):
    """The issue's "done when": ``pip install ./packages/asynctask-web`` (beside core, the
    filesys transport and the metrics plugin it builds on), then ``asynctask web``."""
    venv = tmp_path / "venv"
    packages = [
        str(ROOT / "packages" / name)
        for name in ("asynctask-core", "asynctask-filesys", "asynctask-prometheus", "asynctask-web")
    ]
    # uv's pip installs the same as pip, from its cache: 15 s where pip takes 100 s
    uv = shutil.which("uv") or str(ROOT / ".venv-uv" / "bin" / "uv")
    if os.path.exists(uv):
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        installer = [uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python")]
    else:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        installer = [str(venv / "bin" / "pip"), "install", "-q"]
    pip = subprocess.run([*installer, *packages], capture_output=True, text=True, timeout=600)
    if pip.returncode != 0:
        pytest.skip(f"could not install from the package index: {pip.stderr[-500:]}")
    port = free_port()
    (tmp_path / "asynctask.toml").write_text(
        f'asynctask_transport = "filesys:{tmp_path / "queues"}"\n'
    )
    env = {k: v for k, v in clean_environment().items() if not k.startswith("PYTHON")}
    server = subprocess.Popen(
        [str(venv / "bin" / "asynctask"), "web", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: get(url + "/api/queues")[0] == 200, 60, "asynctask web to answer")
        status, body = get(url + "/api/queues")
        assert json.loads(body)["transport"] == f"filesys:{tmp_path / 'queues'}"
        status, page = get(url + "/")
        assert status == 200 and "<h1>Queues</h1>" in page
    finally:
        server.terminate()
        server.wait(10)
        assert server.stdout is not None
        server.stdout.close()
