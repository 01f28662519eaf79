"""The observability plugins are distributions of their own, found through their entry point."""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys

import pytest

from asynctask.plugins import load_plugins
from asynctask.testing import clean_environment


@pytest.mark.parametrize(
    ("entry", "distribution", "module"),
    [
        ("prometheus", "asynctask-prometheus", "asynctask_prometheus.plugin"),
        ("otel", "asynctask-otel", "asynctask_otel.plugin"),
    ],
)
def test_plugin_is_its_own_distribution_with_an_entry_point(entry, distribution, module):
    [ep] = [e for e in md.entry_points(group="asynctask") if e.name == entry]
    assert ep.value == module
    assert ep.dist is not None and ep.dist.metadata["Name"] == distribution
    requires = " ".join(md.requires(distribution) or [])
    assert "asynctask-core" in requires
    # and load_plugins registers it under that name
    assert load_plugins().manager.get_plugin(entry) is not None


def test_top_is_listed_by_help_through_the_command_hook():
    shown = subprocess.run(
        [sys.executable, "-m", "asynctask", "--help"],
        capture_output=True,
        text=True,
        env=clean_environment(),
    )
    assert shown.returncode == 0 and " top " in shown.stdout.replace("│", " ")
    hidden = subprocess.run(
        [sys.executable, "-m", "asynctask", "--help"],
        capture_output=True,
        text=True,
        env=clean_environment(ASYNCTASK_DISABLE_PLUGINS="prometheus"),
    )
    assert hidden.returncode == 0 and " top " not in hidden.stdout.replace("│", " ")
