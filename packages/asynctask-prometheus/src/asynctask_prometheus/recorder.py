"""The worker child's side: count each attempt into prometheus_client's multiprocess files.

The supervisor started with ``--metrics-port`` sets ``PROMETHEUS_MULTIPROC_DIR`` to a
folder of its own before it starts its children; each child writes its counters to
memory-mapped files there (``counter_<pid>.db``, ``histogram_<pid>.db``), and the
supervisor sums them at scrape time. The files of a dead child stay, so its counts survive
a restart. Without that variable (no ``--metrics-port``) a child records nothing: the hook
returns after one dictionary look-up.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram

MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

#: seconds; task durations range from milliseconds to many minutes
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


class _Metrics:
    """The two series a worker child writes."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.tasks: Counter = Counter(
            "asynctask_tasks",
            "Task attempts by how they ended (succeeded, retried, failed, cancelled, expired).",
            ["queue", "worker", "outcome"],
        )
        self.duration: Histogram = Histogram(
            "asynctask_task_duration_seconds",
            "Seconds process() ran, one observation per attempt.",
            ["queue", "worker"],
            buckets=BUCKETS,
        )


_metrics: _Metrics | None = None
_lock = threading.Lock()


def _get() -> _Metrics | None:
    global _metrics
    if _metrics is None:
        if MULTIPROC_VARIABLE not in os.environ:
            return None
        with _lock:
            if _metrics is None:
                _metrics = _Metrics()
    return _metrics


def record_finished(queue: str, worker: str, outcome: str, duration: float) -> None:
    """Count one attempt of ``worker`` on ``queue``."""
    metrics = _get()
    if metrics is None:
        return
    metrics.tasks.labels(queue, worker, outcome).inc()
    metrics.duration.labels(queue, worker).observe(duration)
