"""Plugins (issue 14, section 3): list what users type; a broken entry point disables
only itself. Distributions are faked with a dist-info on PYTHONPATH of a subprocess, so
nothing is installed in the test environment."""

from __future__ import annotations

import json

import pytest

from asynctask.testing import unique_queue, workers_command
from clitools import fake_distribution, run_asynctask

THUMBS = """
from asynctask import AsyncTaskWorker

class Thumb(AsyncTaskWorker):
    name = "thumbnail"

    def process(self, payload):
        pass
"""
NO_NAME = """
from asynctask import AsyncTaskWorker

class NoName(AsyncTaskWorker):
    def process(self, payload):
        pass
"""


@pytest.fixture
def site(tmp_path):
    """A renamed worker, two broken worker entry points and a broken pluggy plugin."""
    fake_distribution(
        tmp_path / "site", "my-app", {"asynctask.workers": {"thumbs": "thumbsmod:Thumb"}},
        {"thumbsmod": THUMBS},
    )  # fmt: skip
    fake_distribution(
        tmp_path / "site",
        "broken-app",
        {
            "asynctask.workers": {
                "bad_import": "no_such_module_xyz:Worker",
                "no_name": "nonamemod:NoName",
            },
            "asynctask": {"badplug": "no_such_plugin_xyz"},
        },
        {"nonamemod": NO_NAME},
        version="2.5",
    )
    return tmp_path / "site"


def test_plugins_lists_the_name_users_type_and_warns_when_the_entry_point_differs(site):
    result = run_asynctask("plugins", PYTHONPATH=str(site))
    assert result.code == 0, result.err
    [line] = [line for line in result.out.splitlines() if "thumbs = thumbsmod:Thumb" in line]
    assert line.split()[0] == "thumbnail" and "my-app" in line
    assert "'thumbs'" in result.err and "use 'thumbnail'" in result.err


def test_an_entry_point_name_used_as_a_worker_name_points_to_the_real_one(site, tmp_path):
    command = workers_command(f"filesys:{tmp_path / 'q'}", {unique_queue(): "thumbs"})
    result = run_asynctask(*command[3:], PYTHONPATH=str(site), cwd=tmp_path)
    assert result.code == 2
    assert "the entry point 'thumbs' registers the worker 'thumbnail'" in result.err, result.err


def test_a_broken_entry_point_disables_only_itself_and_is_shown_with_its_error(site, tmp_path):
    # `plugins` works, and lists each broken entry point with its error
    result = run_asynctask("plugins", "--json", PYTHONPATH=str(site))
    assert result.code == 0, result.err
    broken = {r["name"]: r for r in json.loads(result.out) if r["kind"] == "broken"}
    assert set(broken) == {"bad_import", "no_name", "badplug"}
    assert "no_such_module_xyz" in broken["bad_import"]["error"]
    assert "without a `name`" in broken["no_name"]["error"]
    assert broken["badplug"]["distribution"] == "broken-app"
    assert broken["badplug"]["version"] == "2.5"
    names = {r["name"] for r in json.loads(result.out)}
    assert {"thumbnail", "test_record", "filesys:"} <= names
    # Commands that do not need them work
    uri = f"filesys:{tmp_path / 'q'}"
    assert run_asynctask("queues", uri=uri, PYTHONPATH=str(site)).code == 0
    command = workers_command(uri, {unique_queue(): "test_record"}, "--halt-when-empty")
    result = run_asynctask(*command[3:], PYTHONPATH=str(site), cwd=tmp_path)
    assert result.code == 0, result.err
    # A command that needs one stops, naming it and its error
    command = workers_command(uri, {unique_queue(): "no_name"}, "--halt-when-empty")
    result = run_asynctask(*command[3:], PYTHONPATH=str(site), cwd=tmp_path)
    assert result.code == 2
    assert "'no_name'" in result.err and "without a `name`" in result.err, result.err


def test_the_internal_command_worker_is_not_offered_as_a_known_worker(tmp_path):
    command = workers_command(f"filesys:{tmp_path / 'q'}", {unique_queue(): "no_such_worker"})
    result = run_asynctask(*command[3:], cwd=tmp_path)
    assert result.code == 2
    known = result.err[result.err.index("known workers:") :]
    assert "test_record" in known and "asynctask_command" not in known, result.err
