"""The public API is what ``asynctask`` exports, sorted and importable."""

from __future__ import annotations

import subprocess
import sys

import asynctask


def test_all_is_sorted_and_every_name_exists():
    assert asynctask.__all__ == sorted(asynctask.__all__)
    for name in asynctask.__all__:
        assert getattr(asynctask, name) is not None


def test_process_queue_and_run_worker_are_importable_as_the_original_named_them():
    from asynctask import process_queue, run_worker

    assert callable(process_queue) and callable(run_worker)


def test_help_imports_no_driver():
    # Given a fresh interpreter, When the CLI's help runs, Then no backend driver loaded
    code = (
        "import sys\n"
        "from asynctask.cli import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "from asynctask.plugins import load_plugins\nload_plugins()\n"
        "print(sorted(m for m in ('psycopg', 'redis', 'kombu', 'amqp') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
