"""``asynctask-demo``: submit a batch, then run the workers until the queues are empty."""

from __future__ import annotations

import json
import subprocess
import sys

from asynctask import get_transport

WORKERS = {"greetings": "demo_greet", "sums": {"worker": "demo_sum", "concurrency": 2}}


def main() -> None:
    """Submit demo tasks to the configured transport and process them with real workers."""
    transport = get_transport()
    names = ["Ada", "Grace", "Linus", "Barbara", "Ken"]
    transport.submit_tasks("greetings", [{"name": n} for n in names])
    transport.submit_tasks("sums", [{"numbers": list(range(n))} for n in range(1, 9)])
    print(f"Submitted {len(names)} greetings and 8 sums to {transport!r}", flush=True)
    command = [
        sys.executable,
        "-m",
        "asynctask",
        "workers",
        "--halt-when-empty",
        "--set",
        "asynctask_workers=" + json.dumps(WORKERS),
    ]
    print("Running:", " ".join(command[2:]), flush=True)
    sys.exit(subprocess.call(command))


if __name__ == "__main__":
    main()
