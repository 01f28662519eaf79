"""The run loop: reserve a task, process it, settle it; and the in-process helpers.

This is the one place where the delivery contract meets a worker: success acknowledges,
an exception retries with back-off until ``max_retries`` is spent, then the task goes to
the failed store with its traceback. A delivery past its last attempt (its worker kept
dying) goes to the failed store without running again.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from asynctask import events, headers
from asynctask.api import get_transport
from asynctask.errors import AsynctaskError, ConfigurationError, TransportUnavailable
from asynctask.outage import OutageReport
from asynctask.plugins import load_plugins
from asynctask.ratelimit import RateLimit
from asynctask.settings import get_settings
from asynctask.transport import Consumer, Delivery, Transport
from asynctask.worker import AsyncTaskWorker

#: A child exits with this code when it stops on purpose and should be started again at
#: once: it reached ``max_tasks_per_child``.
EXIT_RECYCLE = 75
#: A child exits with this code after a task ran past its worker's ``timeout``.
EXIT_TASK_TIMEOUT = 76


@dataclass
class LoopOptions:
    """How a run loop behaves; the supervisor fills it from the settings."""

    halt_when_empty: bool = False
    #: stop as soon as nothing is ready (scripts do not wait out back-off delays)
    stop_when_idle: bool = False
    #: stop after this many tasks (a child's ``max_tasks_per_child``)
    max_tasks: int | None = None
    #: seconds a reserve waits before the loop looks at its stop flag again
    wait: float = 0.5
    rate: RateLimit | None = None
    prefetch: int = 1
    #: set from another thread (a signal handler) to stop after the current task
    stop: threading.Event = field(default_factory=threading.Event)
    #: called (from a watchdog thread) when a task runs past the worker's timeout
    on_timeout: Callable[[], None] | None = None
    #: called right before a task's ``process()`` starts (a child tells its supervisor)
    on_start: Callable[[Delivery], None] | None = None
    #: called once a started task is settled (acknowledged, retried or failed)
    on_settled: Callable[[Delivery], None] | None = None
    #: the owner id whose liveness another process keeps (``asynctask.liveness``);
    #: None: the consumer keeps its own (a heartbeat thread, a held connection)
    owner: str | None = None


@dataclass
class LoopResult:
    """What a run loop did."""

    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    recycled: bool = False


def _error_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).strip()


def settle(
    worker: AsyncTaskWorker, consumer: Consumer, delivery: Delivery, exc: BaseException | None
) -> bool:
    """Acknowledge, retry or fail a delivery after ``process()``; True if it succeeded."""
    log = worker.logger
    if exc is None:
        consumer.ack(delivery)
        events.task_finished(worker, delivery, "succeeded", None)
        log.debug("Processing complete")
        return True
    error = _error_text(exc)
    attempts_left = worker.max_retries + 1 - delivery.attempt
    if isinstance(exc, worker.dont_retry) or attempts_left <= 0:
        why = "not retried" if isinstance(exc, worker.dont_retry) else "no retries left"
        log.error(
            "Task %s failed on attempt %d (%s); moved to the failed store of %s",
            delivery.id,
            delivery.attempt,
            why,
            delivery.queue,
            exc_info=exc,
        )
        consumer.fail(delivery, error)
        events.task_finished(worker, delivery, "failed", exc)
        return False
    delay = worker.backoff(delivery.attempt)
    log.error(
        "An unhandled exception occurred while processing the payload "
        "(task %s, attempt %d of %d); retrying in %g s",
        delivery.id,
        delivery.attempt,
        worker.max_retries + 1,
        delay,
        exc_info=exc,
    )
    consumer.retry(delivery, delay, error)
    events.task_finished(worker, delivery, "retried", exc)
    return False


class _Watchdog:
    """Stops a task that runs past its worker's ``timeout``.

    Python cannot stop a thread, so the watchdog settles the task as a failed attempt and
    ends the whole child process; the supervisor starts a new one.
    """

    def __init__(
        self, worker: AsyncTaskWorker, consumer: Consumer, on_timeout: Callable[[], None] | None
    ) -> None:
        self.worker = worker
        self.consumer = consumer
        self.on_timeout = on_timeout
        self._timer: threading.Timer | None = None

    def start(self, delivery: Delivery) -> None:
        timeout = self.worker.timeout
        if timeout is None or self.on_timeout is None:
            return
        self._timer = threading.Timer(timeout, self._expire, args=(delivery,))
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, delivery: Delivery) -> None:
        exc = TimeoutError(f"task ran past its worker's timeout of {self.worker.timeout:g} s")
        try:
            settle(self.worker, self.consumer, delivery, exc)
        finally:
            assert self.on_timeout is not None
            self.on_timeout()


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


def run_loop(
    worker: AsyncTaskWorker, transport: Transport, queue: str, options: LoopOptions
) -> LoopResult:
    """Take tasks off ``queue`` until stopped, recycled, or (with halt) drained."""
    result = LoopResult()
    worker._transport, worker._queue_name = transport, queue
    limit = options.max_tasks
    consumer = transport.consumer(queue, prefetch=options.prefetch, owner=options.owner)
    watchdog = _Watchdog(worker, consumer, options.on_timeout)
    give_up = transport.retry_timeout if options.halt_when_empty else None
    outage = _Outage(worker.logger, options.stop, give_up)
    drain_check = DrainCheck(transport, queue)
    try:
        while not options.stop.is_set():
            try:
                delivery = consumer.reserve(timeout=options.wait)
            except TransportUnavailable as exc:
                # The backend is away: wait, then start over with a new consumer. What
                # this consumer held comes back to the queue by the transport's recovery.
                outage.failed(exc)
                consumer = _renew(transport, consumer, queue, options)
                watchdog.consumer = consumer
                continue
            outage.ok()
            if delivery is None:
                if options.stop_when_idle:
                    break
                if options.halt_when_empty and drain_check.drained():
                    _report_delayed(worker, transport, queue)
                    worker.logger.info("No tasks found in queue")
                    break
                continue
            if options.rate is not None:
                options.rate.wait(options.stop)
                if options.stop.is_set():
                    consumer.release(delivery)
                    break
            result.processed += 1
            try:
                succeeded = _run_one(worker, consumer, delivery, watchdog, options)
            except TransportUnavailable as exc:
                outage.failed(exc)  # not settled: the task comes back and runs again
                consumer = _renew(transport, consumer, queue, options)
                watchdog.consumer = consumer
                continue
            if succeeded:
                result.succeeded += 1
            else:
                result.failed += 1
            if limit is not None and result.processed >= limit:
                result.recycled = True
                break
    finally:
        consumer.close()
        worker._transport = worker._queue_name = None
    return result


class _Outage:
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


def _renew(transport: Transport, consumer: Consumer, queue: str, options: LoopOptions) -> Consumer:
    try:
        consumer.close()
    except AsynctaskError as exc:
        logging.getLogger("asynctask.runner").debug("closing a broken consumer: %s", exc)
    while True:
        try:
            return transport.consumer(queue, prefetch=options.prefetch, owner=options.owner)
        except TransportUnavailable:
            if options.stop.wait(1.0):
                return transport.consumer(queue, prefetch=options.prefetch, owner=options.owner)


def _run_one(
    worker: AsyncTaskWorker,
    consumer: Consumer,
    delivery: Delivery,
    watchdog: _Watchdog,
    options: LoopOptions,
) -> bool:
    unsafe = consumer.transport.signature_problem(delivery)
    if unsafe is not None:  # asynctask_signing_key is set and this task is not ours
        worker.logger.error("Task %s: %s; moved to the failed store", delivery.id, unsafe)
        consumer.fail(delivery, unsafe)
        return False
    if delivery.attempt > worker.max_retries + 1:
        # Its earlier deliveries ended with their worker dead: do not run it again.
        error = (
            f"gave up after {delivery.attempt - 1} attempts; the last ones ended without a "
            "result (the worker process died or was killed while running it)"
        )
        worker.logger.error("Task %s: %s; moved to the failed store", delivery.id, error)
        consumer.fail(delivery, error)
        events.task_finished(worker, delivery, "failed", None)
        return False
    worker.logger.debug("Got payload: %r", delivery.payload)
    if options.on_start is not None:
        options.on_start(delivery)
    watchdog.start(delivery)
    headers.take(delivery)
    events.task_started(worker, delivery)
    worker.delivery = delivery
    raised: Exception | None = None
    try:
        worker.process(delivery.payload)
    except Exception as exc:
        raised = exc
    finally:
        worker.delivery = None
        watchdog.cancel()
    succeeded = settle(worker, consumer, delivery, raised)
    if options.on_settled is not None:
        options.on_settled(delivery)
    return succeeded


def _report_delayed(worker: AsyncTaskWorker, transport: Transport, queue: str) -> None:
    delayed = transport.queue_stats(queue).delayed
    if delayed:
        worker.logger.info(
            "%d delayed tasks in queue %s are not due yet; not waiting for them", delayed, queue
        )


# -- helpers for scripts and tests -----------------------------------------------------


def _drain(worker_name: str, queue_name: str, quiet: bool) -> int:
    registry = load_plugins(get_settings().imports)
    transport = get_transport()
    worker = registry.worker_class(worker_name)()
    root = logging.getLogger()
    level = root.level
    if quiet:
        root.setLevel(logging.ERROR)
    try:
        worker.setup()
        try:
            options = LoopOptions(stop_when_idle=True, wait=0.05, prefetch=worker.prefetch)
            return run_loop(worker, transport, queue_name, options).processed
        finally:
            worker.teardown()
    finally:
        root.setLevel(level)


def process_queue(queue_name: str, worker_name: str | None = None, quiet: bool = False) -> int:
    """Process the ready tasks of ``queue_name`` in this process; return how many.

    The worker defaults to the one ``asynctask_workers`` names for the queue. Failures are
    retried and sent to the failed store exactly as the workers do; tasks in back-off are
    left for later.
    """
    if worker_name is None:
        config = get_settings().workers.get(queue_name)
        if config is None:
            raise ConfigurationError(
                f'Cannot identify worker for queue "{queue_name}": it is not in '
                "asynctask_workers; pass worker_name"
            )
        worker_name = config.worker
    return _drain(worker_name, queue_name, quiet)


def run_worker(worker_name: str, queue_name: str | None = None, quiet: bool = False) -> int:
    """Process the ready tasks of the queue ``worker_name`` serves; return how many.

    The queue defaults to the first one ``asynctask_workers`` maps to the worker.
    """
    if queue_name is None:
        for queue, config in get_settings().workers.items():
            if config is not None and config.worker == worker_name:
                queue_name = queue
                break
        else:
            raise ConfigurationError(
                f'Cannot identify queue for worker "{worker_name}": no queue in '
                "asynctask_workers uses it; pass queue_name"
            )
    return _drain(worker_name, queue_name, quiet)
