"""``asynctask web`` as a user starts it: found through the plugin's entry point, bound
to loopback by default, refusing a wider bind without a token."""

from __future__ import annotations

import importlib.metadata as md
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from asynctask.testing import clean_environment
from support import free_port
from tests.web.server import WebServer


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
