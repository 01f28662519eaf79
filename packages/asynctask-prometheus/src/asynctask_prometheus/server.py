"""The supervisor's side: the HTTP endpoint, the children's sums and the queue gauges.

``start()`` runs in ``asynctask workers`` before any child starts. It makes a folder for
this run, points ``PROMETHEUS_MULTIPROC_DIR`` at it (the children inherit it), and serves
one registry that reads, at each scrape:

* the children's counters and histograms, summed by ``MultiProcessCollector``;
* ``asynctask_children`` and ``asynctask_child_restarts_total``, kept here from the
  ``asynctask_child_event`` hook (it runs in this process);
* ``asynctask_queue_tasks{queue,state}`` from ``transport.queue_stats`` (a count the
  transport cannot give, such as AMQP's in-flight count, is left out);
* ``asynctask_queue_tasks_estimated{queue,state}``, 1 beside each count that is an
  estimate (``QueueStats.estimated``: pgsql above 10,000), 0 beside an exact one. A gauge
  of its own rather than a label on the count: a label would change the count's series
  (its identity) each time the count crosses the bound, breaking its graph, its
  ``delta()`` and the alerts matching its label set; this keeps the count's series whole
  and joins on the same labels.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from asynctask.errors import AsynctaskError
from asynctask.transport import COUNT_NAMES
from asynctask_prometheus.recorder import MULTIPROC_VARIABLE

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from asynctask.transport import Transport

logger = logging.getLogger("asynctask.prometheus")


class _Children:
    """Live children and restarts per queue, from the child-event hook."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live: dict[str, int] = {}
        self.restarts: dict[str, int] = {}
        self.enabled = False

    def event(self, queue: str, event: str) -> None:
        if not self.enabled:
            return
        with self.lock:
            self.live.setdefault(queue, 0)
            self.restarts.setdefault(queue, 0)
            if event in ("started", "restarted"):
                self.live[queue] += 1
            elif event == "exited":
                self.live[queue] = max(0, self.live[queue] - 1)
            if event == "restarted":
                self.restarts[queue] += 1


_children = _Children()


def child_event(queue: str, event: str) -> None:
    """Count a child's start, restart or exit (a no-op unless the server runs here)."""
    _children.event(queue, event)


class SupervisorCollector:
    """What the supervisor knows itself: its children and the queues' counts."""

    def __init__(self, transport: Transport, queues: Sequence[str]) -> None:
        self.transport = transport
        self.queues = list(queues)

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        children = GaugeMetricFamily(
            "asynctask_children", "Worker child processes running, by queue.", labels=["queue"]
        )
        restarts = CounterMetricFamily(
            "asynctask_child_restarts",
            "Child processes started again (after a crash, recycle or timeout).",
            labels=["queue"],
        )
        with _children.lock:
            for queue in self.queues:
                children.add_metric([queue], _children.live.get(queue, 0))
                restarts.add_metric([queue], _children.restarts.get(queue, 0))
        yield children
        yield restarts
        tasks = GaugeMetricFamily(
            "asynctask_queue_tasks",
            "Tasks of a queue by state, read from the backend at scrape time.",
            labels=["queue", "state"],
        )
        estimated = GaugeMetricFamily(
            "asynctask_queue_tasks_estimated",
            "1 where asynctask_queue_tasks of the same queue and state is an estimate "
            "(pgsql estimates a count above 10,000), 0 where it is exact.",
            labels=["queue", "state"],
        )
        for queue in self.queues:
            try:
                stats = self.transport.queue_stats(queue)
            except AsynctaskError as exc:
                logger.warning("Metrics: cannot read the counts of queue %s: %s", queue, exc)
                continue
            for state in COUNT_NAMES:
                value = getattr(stats, state)
                if value is not None:
                    tasks.add_metric([queue, state], value)
                    estimated.add_metric([queue, state], int(state in stats.estimated))
        yield tasks
        yield estimated


def start(
    port: int, transport: Transport, queues: Sequence[str], addr: str = "0.0.0.0"
) -> Callable[[], None]:
    """Serve metrics on ``port`` (all interfaces); return the function that stops it."""
    folder = tempfile.mkdtemp(prefix="asynctask-metrics-")
    previous = os.environ.get(MULTIPROC_VARIABLE)
    os.environ[MULTIPROC_VARIABLE] = folder
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]
    registry.register(SupervisorCollector(transport, queues))
    _children.enabled = True
    try:
        server, thread = start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise AsynctaskError(
            f"cannot serve metrics on port {port}: {exc}; choose another --metrics-port"
        ) from exc
    logger.info("Serving Prometheus metrics on port %d (/metrics)", port)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)
        _children.enabled = False
        if previous is None:
            os.environ.pop(MULTIPROC_VARIABLE, None)
        else:
            os.environ[MULTIPROC_VARIABLE] = previous
        shutil.rmtree(folder, ignore_errors=True)

    return stop
