"""The ``asynctask`` command (filled in by the workers issue)."""

from __future__ import annotations


def main() -> None:
    """Entry point of ``asynctask``."""
    raise SystemExit("asynctask: the command is not built yet")


def workers_main() -> None:
    """Entry point of ``asynctask-workers``."""
    main()
