"""Code that runs: worker children never import from the working folder by accident.

A child used to start as ``python -m asynctask.child``, which puts the working folder
first on ``sys.path``: a ``json.py`` there ran inside every child. Children start with
``-P``, and the working folder comes after the standard library and site-packages, so
``--import myapp.workers`` from a project folder still works.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from asynctask import get_transport
from asynctask.testing import FAST_CHECKS, clean_environment

ASYNCTASK = str(Path(sys.executable).parent / "asynctask")


def _workers(cwd: Path, uri: str, workers: dict, *args: str) -> subprocess.CompletedProcess[str]:
    command = [ASYNCTASK, "workers", "--halt-when-empty", "--set", f"asynctask_transport={uri}",
               "--set", f"asynctask_workers={json.dumps(workers)}", *args]  # fmt: skip
    for name, value in FAST_CHECKS.items():
        command += ["--set", f"{name}={value}"]
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=45, env=clean_environment()
    )


def test_a_json_py_in_the_working_folder_never_runs_in_a_child(tmp_path):
    # Given a project folder holding a json.py that leaves a mark when imported
    project = tmp_path / "project"
    project.mkdir()
    mark = tmp_path / "imported"
    (project / "json.py").write_text(f"open({str(mark)!r}, 'w').write('shadowed')\n")
    uri = f"filesys:{tmp_path / 'queues'}"
    ledger = tmp_path / "ledger.jsonl"
    get_transport(uri).submit_task("shadow_q", {"ledger": str(ledger), "n": 1})
    # When the workers run from that folder
    done = _workers(project, uri, {"shadow_q": "test_record"})
    # Then the task ran and nothing imported the folder's json.py
    assert done.returncode == 0, done.stderr
    assert ledger.exists() and '"done"' in ledger.read_text()
    assert not mark.exists(), "the working folder's json.py ran"


def test_import_of_a_module_in_the_project_folder_still_works(tmp_path):
    # Given a project folder with its own workers module
    project = tmp_path / "project"
    (project / "myapp").mkdir(parents=True)
    (project / "myapp" / "__init__.py").write_text("")
    (project / "myapp" / "workers.py").write_text(
        "from asynctask import AsyncTaskWorker\n"
        "class Mine(AsyncTaskWorker):\n"
        "    name = 'project_worker'\n"
        "    def process(self, payload):\n"
        "        open(payload['out'], 'a').write('ran\\n')\n"
    )
    uri = f"filesys:{tmp_path / 'queues'}"
    out = tmp_path / "out.txt"
    get_transport(uri).submit_task("project_q", {"out": str(out)})
    # When the workers run from it with --import myapp.workers
    done = _workers(project, uri, {"project_q": "project_worker"}, "--import", "myapp.workers")
    # Then its worker ran the task
    assert done.returncode == 0, done.stderr
    assert out.read_text() == "ran\n"
