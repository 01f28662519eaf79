"""Processed/s and failed/s per queue, from the workers' Prometheus counters.

The same numbers ``asynctask top`` shows, read the same way (``asynctask_prometheus.
rates``): each refresh of the queues reads the metrics endpoints at most once a second,
whoever asks, and a rate is the rise of ``asynctask_tasks_total`` over the last minute.
Without an endpoint (no ``--metrics`` nor ``asynctask_metrics_port``) rates are None.
"""

from __future__ import annotations

import threading
import time

from asynctask_prometheus.rates import Rates, read_totals

#: seconds between two reads of the metrics endpoints
MIN_INTERVAL = 1.0


class LiveRates:
    """Rates kept up to date by the requests that show them."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.errors: list[str] = []
        self._rates = Rates()
        self._lock = threading.Lock()
        self._last = float("-inf")

    def sample(self) -> None:
        """Read the endpoints, unless another request did within ``MIN_INTERVAL``."""
        if not self.urls:
            return
        with self._lock:
            if time.monotonic() - self._last < MIN_INTERVAL:
                return
            self._last = time.monotonic()
            totals, self.errors = read_totals(self.urls, timeout=1.0)
            self._rates.add(totals)

    def per_second(self, queue: str) -> tuple[float, float] | None:
        """(processed/s, failed/s) of ``queue``, or None when not known (yet)."""
        if not self.urls:
            return None
        with self._lock:
            return self._rates.per_second(queue)

    def describe(self) -> str:
        """Where the rates come from, for the page's caption."""
        if not self.urls:
            return (
                "rates: none (start the workers with --metrics-port, or give asynctask web "
                "--metrics URL)"
            )
        text = "rates over the last minute from " + ", ".join(self.urls)
        if self.errors:
            text += "; unreachable: " + "; ".join(self.errors)
        return text
