"""Where modules named by ``--import`` are found: the working folder, last.

A project's own modules (``--import myapp.workers`` run from the project folder) must be
found, but a file there must never shadow the standard library or an installed package:
a ``json.py`` in the folder that ``python -m`` put first on ``sys.path`` ran inside every
worker child. Children start with ``python -P`` (nothing added), and each process puts
the working folder after everything else.
"""

from __future__ import annotations

import os
import sys


def working_folder_last() -> None:
    """Move the working folder (and ``""``) to the end of ``sys.path``."""
    cwd = os.getcwd()
    sys.path[:] = [entry for entry in sys.path if entry not in ("", cwd)]
    sys.path.append(cwd)
