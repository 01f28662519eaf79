"""An interpreter other local users can run, for tests that act as two users.

The test interpreter may live where other users cannot read it (a pyenv under /root), so
those tests run the system's Python of the same minor version in a small virtualenv whose
one ``.pth`` line adds this environment's site-packages (editable installs included).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

SHIM = Path("/tmp/asynctask-shared-python")


def _runs_as_nobody(python: str) -> bool:
    done = subprocess.run(
        ["runuser", "-u", "nobody", "--", python, "-c", "import asynctask_filesys"],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


@pytest.fixture(scope="session")
def shared_python() -> str:
    """A Python every user may run, with asynctask and the test workers importable."""
    if shutil.which("runuser") is None:
        pytest.skip("runuser is not installed")
    if _runs_as_nobody(sys.executable):
        return sys.executable
    system = shutil.which(f"python{sys.version_info[0]}.{sys.version_info[1]}", path="/usr/bin")
    if system is None:
        pytest.skip(
            f"{sys.executable} is not readable by other users and /usr/bin has no Python "
            f"{sys.version_info[0]}.{sys.version_info[1]} to run as them"
        )
    python = SHIM / "bin" / "python"
    if not python.exists():
        subprocess.run([system, "-m", "venv", "--without-pip", str(SHIM)], check=True)
        site = Path(sysconfig.get_paths()["purelib"])
        [shim_site] = (SHIM / "lib").glob("python*/site-packages")
        (shim_site / "asynctask_shared.pth").write_text(
            f"import site; site.addsitedir({str(site)!r})\n"
        )
        os.chmod(SHIM, 0o755)
    if not _runs_as_nobody(str(python)):
        pytest.skip(f"{python} cannot import asynctask as another user")
    return str(python)
