"""What both run loops need around the tasks: the drained check and outage back-off."""

from __future__ import annotations

import logging
import threading
import time

from asynctask.errors import AsynctaskError, TransportUnavailable
from asynctask.outage import OutageReport
from asynctask.transport import Consumer, Transport


class DrainCheck:
    """Tells when a queue is drained: nothing ready, in back-off or in flight anywhere.

    A transport that cannot count tasks in flight (AMQP) gets them back only when their
    dead worker is noticed, so there the queue must look empty for the transport's whole
    recovery time before it counts as drained.
    """

    def __init__(self, transport: Transport, queue: str) -> None:
        self.transport = transport
        self.queue = queue
        self._empty_since: float | None = None

    def drained(self) -> bool:
        stats = self.transport.queue_stats(self.queue)
        busy = (stats.ready or 0) + (stats.retrying or 0) + (stats.in_flight or 0)
        if busy:
            self._empty_since = None
            return False
        if stats.in_flight is not None:
            return True
        now = time.monotonic()
        if self._empty_since is None:
            self._empty_since = now
        return now - self._empty_since >= self.transport.features.recovery_seconds


class Outage:
    """Back-off while the backend is away, told by an ``OutageReport``; with
    ``give_up_after`` (``--halt-when-empty``: the transport's retry_timeout) an outage
    that lasts longer raises ``TransportUnavailable`` instead of waiting forever."""

    def __init__(
        self, log: logging.Logger, stop: threading.Event, give_up_after: float | None = None
    ) -> None:
        self.report = OutageReport(f"worker {log.name}")
        self.stop = stop
        self.pause = 0.0
        self.give_up_after = give_up_after

    def failed(self, exc: BaseException) -> None:
        self.report.failed(exc)
        if self.give_up_after is not None and self.report.lasted() > self.give_up_after:
            raise TransportUnavailable(
                f"{exc} (gave up after waiting {self.give_up_after:g} s with "
                "--halt-when-empty; set the URI option retry_timeout to wait longer)"
            ) from exc
        self.pause = min(max(self.pause * 2, 0.2), 5.0)
        self.stop.wait(self.pause)

    def ok(self) -> None:
        if self.pause:
            self.report.ok()
            self.pause = 0.0


def renew_consumer(
    transport: Transport,
    consumer: Consumer,
    queue: str,
    prefetch: int,
    stop: threading.Event,
    owner: str | None = None,
) -> Consumer:
    """Close a consumer that lost its backend and open a new one, waiting while it is away."""
    try:
        consumer.close()
    except AsynctaskError as exc:
        logging.getLogger("asynctask.runner").debug("closing a broken consumer: %s", exc)
    while True:
        try:
            renewed = transport.consumer(queue, prefetch=prefetch, owner=owner)
        except TransportUnavailable:
            if not stop.wait(1.0):
                continue
            renewed = transport.consumer(queue, prefetch=prefetch, owner=owner)
        renewed.tracking = consumer.tracking
        return renewed
