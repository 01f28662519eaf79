"""The worker of the supervised status contract (``asynctask.testing.supervised``).

Imported by the children of ``asynctask workers`` through ``asynctask_imports``, so it
imports nothing of pytest. A payload names its ``ledger``: each start appends a JSON
line there (one ``O_APPEND`` write: lines of many processes never interleave).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from asynctask.validation import Payload
from asynctask.worker import AsyncTaskWorker

#: the name the contract runs it under
CANCEL_WORKER = "asynctask_cancel_contract"


def ledger_lines(ledger: str, event: str) -> list[dict[str, Any]]:
    """The lines of ``ledger`` (a path) for ``event``, in order."""
    if not os.path.exists(ledger):
        return []
    with open(ledger, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    return [line for line in lines if line["event"] == event]


class CancelContractWorker(AsyncTaskWorker):
    """Records its start, then sleeps ``seconds``. No retry: a delivery that comes back
    after its child was killed is past its last attempt (the case that must still be
    dropped, not failed, when the task was cancelled)."""

    name = CANCEL_WORKER
    max_retries = 0

    def process(self, payload: Payload) -> None:
        delivery = self.delivery
        line = {
            "event": "start",
            "n": payload.get("n"),
            "id": None if delivery is None else delivery.id,
            "attempt": None if delivery is None else delivery.attempt,
        }
        fd = os.open(str(payload["ledger"]), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(line) + "\n").encode())
        finally:
            os.close(fd)
        if payload.get("seconds"):
            time.sleep(float(payload["seconds"]))
