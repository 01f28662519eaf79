"""Rates over the last minute, from the workers' Prometheus counters.

``asynctask top`` reads ``asynctask_tasks_total`` from each metrics endpoint at every
refresh and keeps the samples of the last 60 seconds: a rate is the rise of the counter
from the oldest kept sample to the newest, divided by the time between them. These are
the workers' own counts (every attempt, summed over children, kept across restarts), so
no extra write per task is needed in the backend. A counter that goes down (a supervisor
started again) starts the window afresh.
"""

from __future__ import annotations

import time
import urllib.request
from collections import deque
from dataclasses import dataclass

WINDOW = 60.0


@dataclass(frozen=True)
class Totals:
    """Attempts finished and tasks failed, per queue, at one moment."""

    at: float
    processed: dict[str, float]
    failed: dict[str, float]


def read_totals(urls: list[str], timeout: float = 2.0) -> tuple[Totals, list[str]]:
    """Sum ``asynctask_tasks_total`` over ``urls``; also return the errors met."""
    from prometheus_client.parser import text_string_to_metric_families

    processed: dict[str, float] = {}
    failed: dict[str, float] = {}
    errors: list[str] = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                text = response.read().decode()
        except OSError as exc:
            errors.append(f"{url}: {exc}")
            continue
        for family in text_string_to_metric_families(text):
            if family.name != "asynctask_tasks":
                continue
            for sample in family.samples:
                if sample.name != "asynctask_tasks_total":
                    continue
                queue = sample.labels.get("queue", "")
                processed[queue] = processed.get(queue, 0.0) + sample.value
                if sample.labels.get("outcome") == "failed":
                    failed[queue] = failed.get(queue, 0.0) + sample.value
    return Totals(time.monotonic(), processed, failed), errors


class Rates:
    """The samples of the last ``WINDOW`` seconds and the rates they give."""

    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self.samples: deque[Totals] = deque()

    def add(self, totals: Totals) -> None:
        if self.samples and any(
            totals.processed.get(q, 0.0) < v for q, v in self.samples[-1].processed.items()
        ):
            self.samples.clear()  # a counter went down: its process started again
        self.samples.append(totals)
        while len(self.samples) > 2 and totals.at - self.samples[1].at >= self.window:
            self.samples.popleft()

    def per_second(self, queue: str) -> tuple[float, float] | None:
        """(processed/s, failed/s) of ``queue``, or None before two samples."""
        if len(self.samples) < 2:
            return None
        first, last = self.samples[0], self.samples[-1]
        span = last.at - first.at
        if span <= 0:
            return None
        processed = last.processed.get(queue, 0.0) - first.processed.get(queue, 0.0)
        failed = last.failed.get(queue, 0.0) - first.failed.get(queue, 0.0)
        return processed / span, failed / span
