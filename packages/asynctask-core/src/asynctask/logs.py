"""Logging set-up shared by the command and its child processes."""

from __future__ import annotations

import logging
import sys

from asynctask.outage import LOGGER_NAME as OUTAGE_LOGGER
from asynctask.uri import redact

FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


class RedactingFormatter(logging.Formatter):
    """Hides passwords in every line, tracebacks included: a driver's error, a command's
    argument or a printed environment can hold a URI that no caller redacted."""

    def format(self, record: logging.LogRecord) -> str:
        """The line, with every password in it replaced by ``***``."""
        return redact(super().format(record))


def setup_logging(quiet: bool = False, level: int = logging.INFO) -> None:
    """Log to stderr; ``quiet`` leaves only errors."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.ERROR if quiet else level)
    # -q hides task logs, not failures: an unreachable backend is always told.
    logging.getLogger(OUTAGE_LOGGER).setLevel(logging.INFO)
    for noisy in ("apscheduler", "amqp", "kombu", "psycopg", "psycopg.pool"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def redact_last_resort() -> None:
    """Redact what Python prints when nothing set logging up (its "last resort" handler,
    WARNING and above, message only): commands other than ``workers`` log that way."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(RedactingFormatter("%(message)s"))
    logging.lastResort = handler
