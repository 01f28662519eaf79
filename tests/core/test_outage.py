"""An outage is told when it starts, once a minute while it lasts, and when it ends."""

from __future__ import annotations

import logging
import time

from asynctask.logs import setup_logging
from asynctask.outage import LOGGER_NAME, OutageReport


def test_an_outage_is_told_at_its_start_every_reminder_and_its_end(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    report = OutageReport("worker w", remind_every=0.2)
    error = ConnectionError("refused")
    # When calls keep failing for a while
    for _ in range(5):
        report.failed(error)
    assert [r.getMessage() for r in caplog.records] == [
        "worker w: backend unreachable (refused); waiting for it"
    ]
    time.sleep(0.25)
    report.failed(error)
    report.failed(error)
    # Then one reminder per period, not one per failure
    assert len(caplog.records) == 2 and "still unreachable after" in caplog.records[1].getMessage()
    # And the end is told once
    report.ok()
    report.ok()
    assert len(caplog.records) == 3 and "reachable again" in caplog.records[2].getMessage()
    assert not report.in_outage


def test_quiet_logging_hides_task_logs_but_not_outages():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    setup_logging(quiet=True)
    try:
        assert not logging.getLogger("asynctask.worker.w").isEnabledFor(logging.INFO)
        assert logging.getLogger(LOGGER_NAME).isEnabledFor(logging.ERROR)
        assert logging.getLogger(LOGGER_NAME).isEnabledFor(logging.WARNING)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
