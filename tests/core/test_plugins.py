"""Plugins: entry points, pluggy hooks, --import, clashes, and the off switch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from asynctask import AsyncTaskWorker, PluginError
from asynctask.plugins import Registry, load_plugins


def test_workers_come_from_entry_points_hooks_and_imports():
    registry = load_plugins(["asynctask_testworkers.imported"])
    assert registry.workers["test_record"].source == "entry point 'test_record'"
    assert registry.workers["test_hooked"].source == "plugin 'testworkers_hooks'"
    assert registry.workers["test_imported"].source == "module 'asynctask_testworkers.imported'"


def test_transports_are_registered_by_scheme_through_the_same_hook():
    registry = load_plugins()
    for scheme in ("localmem", "filesys", "pgsql", "postgresql", "redis", "rediss", "amqp"):
        assert scheme in registry.transports


def test_two_workers_with_one_name_are_an_error_naming_both():
    registry = Registry()

    class One(AsyncTaskWorker):
        name = "same"

    class Two(AsyncTaskWorker):
        name = "same"

    registry.add_worker(One, "entry point 'one'")
    with pytest.raises(
        PluginError, match="two workers are named 'same'.*One.*entry point 'one'.*Two.*module 'x'"
    ):
        registry.add_worker(Two, "module 'x'")


def test_import_of_a_missing_module_is_clear():
    with pytest.raises(PluginError, match="cannot import module 'no_such_module_here'"):
        load_plugins(["no_such_module_here"])


def test_disable_plugins_switches_named_plugins_off():
    code = (
        "from asynctask.plugins import load_plugins\n"
        "r = load_plugins()\n"
        "print('redis' in r.transports, 'test_record' in r.workers, 'filesys' in r.transports)\n"
    )
    env = {"ASYNCTASK_DISABLE_PLUGINS": "redis, test_record", "PATH": ""}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.split() == ["False", "False", "True"]
