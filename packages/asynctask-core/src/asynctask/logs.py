"""Logging set-up shared by the command and its child processes."""

from __future__ import annotations

import logging
import sys

from asynctask.outage import LOGGER_NAME as OUTAGE_LOGGER

FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


def setup_logging(quiet: bool = False, level: int = logging.INFO) -> None:
    """Log to stderr; ``quiet`` leaves only errors."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.ERROR if quiet else level)
    # -q hides task logs, not failures: an unreachable backend is always told.
    logging.getLogger(OUTAGE_LOGGER).setLevel(logging.INFO)
    for noisy in ("apscheduler", "amqp", "kombu", "psycopg", "psycopg.pool"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
