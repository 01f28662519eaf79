"""Every installed transport plugin has a run of the shared contract suite."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from asynctask import ConfigurationError, get_transport
from asynctask.plugins import load_plugins
from asynctask.settings import configure, load_settings

TESTS = Path(__file__).parent


def contract_classes() -> dict[str, list[str]]:
    """Test classes that subclass TransportContract, by test folder."""
    found: dict[str, list[str]] = {}
    for path in TESTS.glob("*/test_*contract*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(b, ast.Name) and b.id == "TransportContract" for b in node.bases
            ):
                found.setdefault(path.parent.name, []).append(node.name)
    return found


def test_every_installed_transport_runs_the_contract():
    registry = load_plugins()
    classes = contract_classes()
    for plugin in {entry.plugin for entry in registry.transports.values()}:
        folder = "core" if plugin == "builtin" else plugin
        assert classes.get(folder), (
            f"transport plugin {plugin!r} has no TransportContract run in tests/{folder}/"
        )


def test_missing_default_transport_says_to_install_it_or_configure_one(tmp_path, monkeypatch):
    registry = load_plugins()
    monkeypatch.delitem(registry.transports, "filesys")
    configure(load_settings(environ={}, cwd=tmp_path))
    with pytest.raises(
        ConfigurationError,
        match=r'pip install "asynctask-filesys" .*packages/asynctask-filesys\), or set asynctask',
    ):
        get_transport()
