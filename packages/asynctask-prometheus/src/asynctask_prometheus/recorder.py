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
    """The two series a worker child writes, with their labelled children cached.

    ``labels()`` costs about 1.8 us a call here; a task pays it once per new label set.
    """

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
        self.counters: dict[tuple[str, str, str], Counter] = {}
        self.histograms: dict[tuple[str, str], Histogram] = {}

    def finished(self, queue: str, worker: str, outcome: str, duration: float) -> None:
        key = (queue, worker, outcome)
        counter = self.counters.get(key)
        if counter is None:
            counter = self.counters[key] = self.tasks.labels(queue, worker, outcome)
        histogram = self.histograms.get(key[:2])
        if histogram is None:
            histogram = self.histograms[(queue, worker)] = self.duration.labels(queue, worker)
        counter.inc()
        histogram.observe(duration)


_metrics: _Metrics | None = None
#: decided once per process: whether this process runs under ``--metrics-port``
_enabled: bool | None = None
_lock = threading.Lock()


def _get() -> _Metrics | None:
    global _metrics, _enabled
    if _metrics is None:
        if _enabled is None:
            _enabled = MULTIPROC_VARIABLE in os.environ
        if not _enabled:
            return None
        with _lock:
            if _metrics is None:
                _metrics = _Metrics()
    return _metrics


def record_finished(queue: str, worker: str, outcome: str, duration: float) -> bool:
    """Count one attempt of ``worker`` on ``queue``; False when this process counts
    nothing (no ``--metrics-port``), for good."""
    if _enabled is False:
        return False  # no --metrics-port: nothing to count
    metrics = _metrics or _get()
    if metrics is None:
        return False
    metrics.finished(queue, worker, outcome, duration)
    return True
