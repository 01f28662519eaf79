"""``python -m bench.scrape``: a real ``--metrics-port`` run, scraped and plotted.

Starts ``asynctask workers --metrics-port`` (two children of ``bench_demo`` on filesys),
submits a steady mix of tasks (some slow, one in ten failing every attempt), scrapes the
supervisor every half second with a plain HTTP client and the Prometheus text parser, then
draws what a Grafana board on these series would show: attempts per second by outcome,
tasks by state, duration quantiles from the histogram, children. The chart is
``docs/metrics-scrape.png``; no Grafana is needed to check that the series make sense.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from asynctask.api import get_transport
from asynctask.testing import FAST_CHECKS, clean_environment, workers_command
from bench import report
from bench.ours import ROOT

#: a sample: (seconds since start, {(name, sorted labels): value})
Sample = tuple[float, dict[tuple[str, tuple[tuple[str, str], ...]], float]]


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one scrape; {} while nothing listens yet."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def run(seconds: float, rate: float, folder: Path) -> list[Sample]:
    """Run the workers with a steady producer for ``seconds``; every scrape taken."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"filesys:{folder / 'queues'}"
    queue = "bench_metrics"
    command = workers_command(
        uri,
        {queue: {"worker": "bench_demo", "concurrency": 2}},
        "--import", "bench.workers", "-q", "--metrics-port", str(port),
        settings=FAST_CHECKS,
    )  # fmt: skip
    env = clean_environment()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    transport = get_transport(uri)
    url = f"http://127.0.0.1:{port}/metrics"
    samples: list[Sample] = []
    rng = random.Random(7)
    log = open(folder / "workers.log", "wb")  # noqa: SIM115 (closed with the process)
    with log, subprocess.Popen(command, env=env, cwd=folder, stdout=log, stderr=log) as workers:
        try:
            began = time.monotonic()
            next_scrape = began
            killed = False
            while (now := time.monotonic()) - began < seconds + 5:
                if not killed and now - began > seconds * 0.66:
                    killed = _kill_a_child(workers.pid)  # the restart counter moves
                if now - began < seconds:
                    # a burst in the middle third: the queue backs up, then drains
                    burst = 3.0 if seconds / 3 < now - began < seconds / 2 else 1.0
                    count = rng.randint(0, int(2 * rate * burst * 0.1))
                    transport.submit_tasks(
                        queue,
                        [
                            {"seconds": rng.expovariate(1 / 0.02), "fail": rng.random() < 0.1}
                            for _ in range(count)
                        ],
                    )
                if now >= next_scrape:
                    samples.append((now - began, scrape(url)))
                    next_scrape += 0.5
                time.sleep(0.1)
        finally:
            workers.terminate()
            workers.wait(60)
    return [s for s in samples if s[1]]


def _kill_a_child(pid: int) -> bool:
    """SIGKILL one child of ``pid`` (the supervisor starts another)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return False
    if children:
        os.kill(int(children[0]), signal.SIGKILL)
    return bool(children)


def main(argv: list[str]) -> int:
    """Run, scrape, plot."""
    parser = argparse.ArgumentParser(prog="python -m bench.scrape", description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=40.0, help="tasks submitted per second")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "metrics-scrape.png")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="bench-scrape-"))
    samples = run(args.seconds, args.rate, folder)
    report.scrape_chart(samples, args.out)
    print(f"{len(samples)} scrapes plotted in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
