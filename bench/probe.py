"""``python -m bench.probe NAME``: the submit figures alone, through the Transport API only.

For ``bench.compare --probe``: it imports nothing of a commit's own bench harness, only
``asynctask`` (whichever venv runs it), so the same code measures an older commit's
packages and this tree's. Prints JSON in ``bench.compare``'s shape: ``submit_one``
(``submit_task`` one by one) and ``submit_batch`` (``submit_tasks``, 1,000 a call).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from asynctask.plugins import load_plugins
from bench.plan import BACKENDS


def probe(name: str, one: int, batch: int) -> dict[str, Any]:
    """The two submit rates of transport ``name``, on a queue of its own (purged after)."""
    folder = Path(tempfile.mkdtemp(prefix="asynctask-probe-"))
    uri = BACKENDS[name].uri(folder)
    transport = load_plugins().transport_class(uri)(uri)
    queue = f"bench_probe_{uuid.uuid4().hex[:10]}"
    items = [{"n": n, "sent": 0.0} for n in range(max(one, batch))]
    try:
        start = time.perf_counter()
        for payload in items[:one]:
            transport.submit_task(queue, payload)
        rate_one = one / (time.perf_counter() - start)
        transport.purge(queue)
        start = time.perf_counter()
        for i in range(0, batch, 1000):
            transport.submit_tasks(queue, items[i : i + 1000])
        rate_batch = batch / (time.perf_counter() - start)
        transport.purge(queue)
    finally:
        transport.close()
    row = {"unit": "tasks/s"}
    return {
        "submit_one": {**row, "label": "submit, one by one", "ours": rate_one},
        "submit_batch": {**row, "label": "submit, batches (1,000)", "ours": rate_batch},
    }


if __name__ == "__main__":
    name, one, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(probe(name, one, batch)))
