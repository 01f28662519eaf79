"""``python -m bench.probe NAME``: the submit figures alone, through the Transport API only.

For ``bench.compare --probe``: it imports nothing of a commit's own bench harness, only
``asynctask`` (whichever venv runs it), so the same code measures an older commit's
packages and this tree's. Prints JSON in ``bench.compare``'s shape: ``submit_one``
(``submit_task`` one by one) and ``submit_batch`` (``submit_tasks``, 1,000 a call).

``python -m bench.probe NAME --serve [--untracked]`` (``bench.compare --interleaved``):
submits one by one as told, a count per line on stdin, and answers each with the
seconds it took; ``--untracked`` marks its queue untracked first where the commit knows
of tracking. Two commits' servers taking turns chunk by chunk meet the same disk and load.
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


def _keeps_none(transport: object) -> bool:
    """True where the transport keeps no status at all (AMQP without ``asynctask_state``):
    nothing to switch off, its submits write none."""
    try:
        transport.state()  # type: ignore[attr-defined]
    except Exception as error:  # StatusNotKept; an older commit's bench may lack the class
        return type(error).__name__ == "StatusNotKept"
    return False


def serve(name: str, untracked: bool) -> None:
    """Submit one by one, ``n`` tasks per line ``n`` read on stdin (0 ends); answer each
    line with the seconds the ``n`` submits took. Its queue purged at the end."""
    folder = Path(tempfile.mkdtemp(prefix="asynctask-probe-"))
    uri = BACKENDS[name].uri(folder)
    transport = load_plugins().transport_class(uri)(uri)
    queue = f"bench_probe_{uuid.uuid4().hex[:10]}"
    store = getattr(transport, "state", None)  # a commit before status tracking: none
    if untracked and store is not None and not _keeps_none(transport):
        store().set_tracking(queue, False)
    else:
        untracked = False
    sent = 0
    try:
        for payload in [{"n": n, "sent": 0.0} for n in range(20)]:  # connections, caches
            transport.submit_task(queue, payload)
        print("ready", flush=True)
        for line in sys.stdin:
            count = int(line)
            if count <= 0:
                break
            items = [{"n": sent + n, "sent": 0.0} for n in range(count)]
            start = time.perf_counter()
            for payload in items:
                transport.submit_task(queue, payload)
            print(time.perf_counter() - start, flush=True)
            sent += count
        transport.purge(queue)
        if untracked and store is not None:
            store().set_tracking(queue, True)
    finally:
        transport.close()


if __name__ == "__main__":
    if "--serve" in sys.argv:
        serve(sys.argv[1], "--untracked" in sys.argv)
    else:
        name, one, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
        print(json.dumps(probe(name, one, batch)))
