"""The run loop: reserve a task, process it, settle it; and the in-process helpers.

This is the one place where the delivery contract meets a worker: success acknowledges,
an exception (``SystemExit`` from task code included) retries with back-off until
``max_retries`` is spent, then the task goes to the failed store with its traceback. A
delivery past its last attempt (its worker kept dying) goes to the failed store without
running again. A worker with ``async def process`` or ``child_concurrency > 1`` runs in
``asynctask.eventloop`` instead, many tasks at once, settled the same way.

Timeouts: in a child, a watchdog thread settles a task past its ``timeout`` and ends the
child (the supervisor starts a new one). ``process_queue``/``run_worker`` have no child to
end: in the main thread a ``SIGALRM`` interrupts the task (as RQ's in-process worker
does); in any other thread the task runs to its end and then counts as timed out.

Signals in ``process_queue``/``run_worker``: SIGINT's ``KeyboardInterrupt`` and, from the
main thread with Python's default SIGTERM, a SIGTERM alike stop the task in hand; the
consumer's close hands it back uncounted (``_sigterm_interrupts``). A plain ``process``
run in threads cannot be stopped: there either signal is a graceful stop, the running
tasks finish and are settled, and a second signal ends the process (``_stop_gracefully``).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType

from asynctask import events
from asynctask.api import get_transport
from asynctask.attempts import (
    LoopResult,
    SetupFailed,
    TaskTimeout,
    announce_tracking,
    cancelled_while_running,
    give_up_if_spent,
    not_started,
    record,
    refuse_awaitable,
    refuse_unsigned,
    settle,
    tracking,
)
from asynctask.draining import DrainCheck, Outage, renew_consumer
from asynctask.errors import ConfigurationError, TransportUnavailable
from asynctask.limits import GlobalLimit
from asynctask.plugins import load_plugins
from asynctask.ratelimit import RateLimit
from asynctask.settings import get_settings
from asynctask.transport import Consumer, Delivery, Transport
from asynctask.worker import AsyncTaskWorker

__all__ = [
    "EXIT_RECYCLE",
    "EXIT_TASK_TIMEOUT",
    "DrainCheck",
    "LoopOptions",
    "LoopResult",
    "SetupFailed",
    "process_queue",
    "run_loop",
    "run_worker",
    "serve",
    "settle",
]

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
    #: the queue's global limits, kept in the backend (``asynctask.limits``)
    limit: GlobalLimit | None = None
    prefetch: int = 1
    #: set from another thread (a signal handler) to stop after the current task
    stop: threading.Event = field(default_factory=threading.Event)
    #: called (from a watchdog thread) when a task runs past the worker's timeout; it
    #: ends the process. None (in-process helpers): see the module docstring.
    on_timeout: Callable[[], None] | None = None
    #: tasks run at once; None: the worker's ``child_concurrency`` (16 async, 1 sync)
    child_concurrency: int | None = None
    #: seconds running tasks get to finish when a child must be replaced
    grace: float = 30.0
    #: called right before a task's ``process()`` starts (a child tells its supervisor;
    #: from the thread that starts it)
    on_start: Callable[[Delivery], None] | None = None
    #: called once a started task is settled (acknowledged, retried or failed)
    on_settled: Callable[[Delivery], None] | None = None
    #: called once a task that never started is settled (refused unsigned, spent,
    #: cancelled or expired before its start)
    on_unstarted: Callable[[Delivery], None] | None = None
    #: called when the loop may wait (nothing was ready, a rate limit) and when it ends:
    #: a child writes the settled lines it held back (``asynctask.reports``)
    on_idle: Callable[[], None] | None = None
    #: the owner id whose liveness another process keeps (``asynctask.liveness``);
    #: None: the consumer keeps its own (a heartbeat thread, a held connection)
    owner: str | None = None
    #: keep task statuses (``asynctask.status``); None: the worker's ``track_status``
    track_status: bool | None = None


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
        #: whether tasks are watched at all (the run loop skips both calls when not)
        self.armed = worker.timeout is not None and on_timeout is not None

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
        assert self.worker.timeout is not None
        try:
            settle(self.worker, self.consumer, delivery, TaskTimeout(self.worker.timeout))
        finally:
            assert self.on_timeout is not None
            self.on_timeout()


def uses_event_loop(worker: AsyncTaskWorker, options: LoopOptions) -> bool:
    """Whether ``worker`` needs the event loop: anything ``async def``, or concurrency > 1."""
    cls = type(worker)
    concurrency = options.child_concurrency or cls.concurrency()
    hooks = (cls.process, cls.setup, cls.teardown)
    return concurrency > 1 or any(inspect.iscoroutinefunction(h) for h in hooks)


def serve(
    worker: AsyncTaskWorker, transport: Transport, queue: str, options: LoopOptions
) -> LoopResult:
    """``setup()``, the run loop, ``teardown()``: what a child does with its worker.

    An ``async def`` setup or teardown runs on the event loop the tasks run on. A setup
    that raises ends it with ``SetupFailed`` (no task ran, teardown is not called).
    """
    if uses_event_loop(worker, options):
        return _run_concurrent(worker, transport, queue, options, with_setup=True)
    try:
        worker.setup()
    except Exception as exc:
        raise SetupFailed(exc) from exc
    try:
        return run_loop(worker, transport, queue, options)
    finally:
        worker.teardown()


def _run_concurrent(
    worker: AsyncTaskWorker,
    transport: Transport,
    queue: str,
    options: LoopOptions,
    with_setup: bool,
) -> LoopResult:
    # Imported here, not at the top: asyncio costs every process that imports asynctask
    # (the CLI, the supervisor, sync children) 60-130 ms of start-up on this machine.
    from asynctask.eventloop import run_concurrent

    return run_concurrent(worker, transport, queue, options, with_setup)


def run_loop(
    worker: AsyncTaskWorker, transport: Transport, queue: str, options: LoopOptions
) -> LoopResult:
    """Take tasks off ``queue`` until stopped, recycled, or (with halt) drained."""
    if uses_event_loop(worker, options):
        return _run_concurrent(worker, transport, queue, options, with_setup=False)
    result = LoopResult()
    worker._transport, worker._queue_name = transport, queue
    limit = options.max_tasks
    consumer = transport.consumer(queue, prefetch=options.prefetch, owner=options.owner)
    consumer.tracking = tracking(worker, options.track_status)
    announce_tracking(worker, transport, queue, consumer.tracking)
    watchdog = _Watchdog(worker, consumer, options.on_timeout)
    give_up = transport.retry_timeout if options.halt_when_empty else None
    outage = Outage(worker.logger, options.stop, give_up)
    drain_check = DrainCheck(transport, queue)
    run = _TaskRun(worker, consumer, watchdog, options)
    # (read once, not at every task: the loop's own cost is most of a no-op task's)
    stopped, wait, rate, glimit = options.stop.is_set, options.wait, options.rate, options.limit
    try:
        while not stopped():
            try:
                delivery = consumer.reserve(wait)
            except TransportUnavailable as exc:
                # The backend is away: wait, then start over with a new consumer. What
                # this consumer held comes back to the queue by the transport's recovery.
                outage.failed(exc)
                consumer = _renew(transport, run, queue, options)
                continue
            if outage.pause:
                outage.ok()
            if delivery is None:
                if options.on_idle is not None:
                    options.on_idle()
                if options.stop_when_idle:
                    break
                if options.halt_when_empty and drain_check.drained():
                    _report_delayed(worker, transport, queue)
                    worker.logger.info("No tasks found in queue")
                    break
                continue
            if stopped():
                # Reserved while the stop arrived: hand it back unstarted, uncounted.
                consumer.release(delivery)
                break
            if rate is not None or glimit is not None:
                if options.on_idle is not None:
                    options.on_idle()  # a limit may wait
                if rate is not None:
                    rate.wait(options.stop)
                    if stopped():
                        consumer.release(delivery)
                        break
                if glimit is not None:
                    try:
                        allowed = glimit.wait(delivery, options.stop)
                    except TransportUnavailable as exc:
                        outage.failed(exc)  # the unstarted task comes back by recovery
                        consumer = _renew(transport, run, queue, options)
                        continue
                    if not allowed:
                        consumer.release(delivery)
                        break
            result.processed += 1
            try:
                succeeded = run.run(delivery)
            except TransportUnavailable as exc:
                outage.failed(exc)  # not settled: the task comes back and runs again
                consumer = _renew(transport, run, queue, options)
                continue
            finally:
                if glimit is not None:
                    glimit.finished(delivery)
            if succeeded:
                result.succeeded += 1
            elif succeeded is not None:  # None: cancelled or expired, never run
                result.failed += 1
            if limit is not None and result.processed >= limit:
                result.recycled = True
                break
    finally:
        if options.on_idle is not None:
            options.on_idle()
        consumer.close()
        worker._transport = worker._queue_name = None
    return result


def _renew(transport: Transport, run: _TaskRun, queue: str, options: LoopOptions) -> Consumer:
    """A new consumer in place of ``run``'s after an outage (``renew_consumer``), given to
    ``run`` and its watchdog too (the one consumer of the loop, the run and the watchdog)."""
    consumer = renew_consumer(
        transport, run.consumer, queue, options.prefetch, options.stop, options.owner
    )
    run.consumer = run.watchdog.consumer = consumer
    return consumer


class _TaskRun:
    """Runs one delivery at a time for ``run_loop``, with what every task needs read once.

    This is the hot path of a no-op drain (issue 20: the run loop, hooks, logging and
    report pipe were ~37% of a redis child's own time a task at prefetch 32, by
    ``python -m bench.taskcost``), so a task makes as few Python calls as it can: no
    event call without a plugin to hear it, one ``isEnabledFor`` for both debug lines,
    the success path of ``attempts.settle`` inline (every other outcome goes through
    ``settle``). A no-op task's loop went from 15.7k to 8.9k instructions (callgrind).
    """

    __slots__ = (
        "attempts",
        "consumer",
        "inline_timeout",
        "log",
        "on_settled",
        "on_start",
        "on_unstarted",
        "signed",
        "timed",
        "watchdog",
        "worker",
    )

    def __init__(
        self,
        worker: AsyncTaskWorker,
        consumer: Consumer,
        watchdog: _Watchdog,
        options: LoopOptions,
    ) -> None:
        self.worker = worker
        self.consumer = consumer
        self.watchdog = watchdog
        self.log = worker.logger
        #: the deliveries past it were spent before they came (their workers died)
        self.attempts = worker.max_retries + 1
        self.signed = bool(consumer.transport.signing_keys)
        self.timed = worker.timeout is not None
        self.inline_timeout = watchdog.on_timeout is None
        self.on_start = options.on_start
        self.on_settled = options.on_settled
        self.on_unstarted = options.on_unstarted

    def run(self, delivery: Delivery) -> bool | None:
        """Run one delivery; True if it succeeded, None if it was not run (cancelled or
        expired before it started)."""
        worker, consumer = self.worker, self.consumer
        if self.signed and refuse_unsigned(worker, consumer, delivery):
            if self.on_unstarted is not None:
                self.on_unstarted(delivery)
            return False
        tracked = consumer.tracking
        if tracked:
            # before the spent check: a task cancelled while its child ran comes back
            # past its last attempt (the child was replaced); start() drops it, where
            # giving up would put it in the failed store (DESIGN.md section 6)
            verdict = consumer.start(delivery)  # (attempts.start inline)
            if verdict != "run":
                not_started(worker, delivery, verdict)
                if self.on_unstarted is not None:
                    self.on_unstarted(delivery)
                return None
        if delivery.attempt > self.attempts and give_up_if_spent(worker, consumer, delivery):
            if self.on_unstarted is not None:
                self.on_unstarted(delivery)
            return False
        log = self.log
        debug = log.isEnabledFor(logging.DEBUG)
        if debug:
            log.debug("Got payload: %r", delivery.payload)
        if self.on_start is not None:
            self.on_start(delivery)
        watchdog = self.watchdog
        if watchdog.armed:
            watchdog.start(delivery)
        hooks = events.task_hooks
        if hooks:
            events.task_started(worker, delivery)
        worker._delivery = delivery  # one loop per worker object here: no context variable
        try:
            if not self.timed:
                outcome = worker.process(delivery.payload)
                if outcome is not None:
                    refuse_awaitable(worker, outcome)
            else:
                outcome = _process(worker, delivery, self.inline_timeout)
        except (Exception, SystemExit) as exc:
            # SystemExit too: sys.exit() in task code is the task's failure, not the
            # worker's wish to stop (unhandled, it would end the child and the task would
            # come back uncounted, forever).
            watchdog.cancel()
            succeeded = settle(worker, consumer, delivery, exc)
        else:
            if watchdog.armed:
                watchdog.cancel()
            if outcome is not None and tracked:
                succeeded = settle(worker, consumer, delivery, None, outcome)
            else:
                # attempts.settle's success path with no result to store, inline (a call
                # less and no event call: ~2.5k instructions a task, callgrind)
                if tracked and consumer.has_status_feed:
                    told = record(consumer, delivery, "succeeded", send_now=True)  # (see there)
                    if consumer.ack(delivery, None) or told:
                        cancelled_while_running(log, delivery)
                else:
                    if consumer.ack(delivery, None):
                        cancelled_while_running(log, delivery)
                    if tracked and consumer.transport.state_uri is not None:
                        # (without asynctask_state, the ack wrote the outcome: no call)
                        consumer.record_outcome(delivery, "succeeded")
                if hooks:
                    events.task_finished(worker, delivery, "succeeded", None)
                if debug:
                    log.debug("Processing complete")
                succeeded = True
        finally:
            worker._delivery = None
        if self.on_settled is not None:
            self.on_settled(delivery)
        return succeeded


def _process(worker: AsyncTaskWorker, delivery: Delivery, inline_timeout: bool) -> object:
    """Run ``process()``, enforcing ``timeout`` here when no watchdog ends the process;
    return what it returned."""
    timeout = worker.timeout
    if timeout is None or not inline_timeout:
        return _call(worker, delivery)
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        with _alarm(timeout):
            return _call(worker, delivery)
    began = time.monotonic()
    outcome = _call(worker, delivery)
    if time.monotonic() - began > timeout:
        raise TaskTimeout(timeout)
    return outcome


def _call(worker: AsyncTaskWorker, delivery: Delivery) -> object:
    outcome = worker.process(delivery.payload)
    if outcome is not None:
        refuse_awaitable(worker, outcome)
    return outcome


@contextlib.contextmanager
def _alarm(timeout: float) -> Iterator[None]:
    """Raise ``TaskTimeout`` in the main thread after ``timeout`` seconds (SIGALRM)."""

    def ring(signum: int, frame: FrameType | None) -> None:
        raise TaskTimeout(timeout)

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


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
        config = get_settings().workers.get(queue_name)
        options = LoopOptions(
            stop_when_idle=True,
            wait=0.05,
            prefetch=worker.prefetch or transport.default_prefetch,
            track_status=None if config is None else config.track_status,
        )
        try:
            if uses_event_loop(worker, options) and not worker.is_async():
                # a plain process in threads: no exception stops a thread (see below)
                with _stop_gracefully(options.stop) as received:
                    processed = serve(worker, transport, queue_name, options).processed
                if received and received[0] == signal.SIGINT:
                    raise KeyboardInterrupt
                if received:
                    raise SystemExit(128 + signal.SIGTERM)
                return processed
            with _sigterm_interrupts(True):
                return serve(worker, transport, queue_name, options).processed
        except SetupFailed as exc:
            raise exc.error from None  # a script sees its own setup's error
        except _Terminated:
            # The task in hand was interrupted and handed back uncounted (the consumer's
            # close); the caller ends as a process stopped by SIGTERM does (128 + 15),
            # its own finally blocks run.
            raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        root.setLevel(level)


class _Terminated(KeyboardInterrupt):
    """SIGTERM during ``process_queue``/``run_worker``, raised as SIGINT's
    ``KeyboardInterrupt`` is (and a kind of it): no ``except Exception`` (nor the run
    loop's, which counts a task's errors and ``SystemExit``) takes it for the task's
    failure, and asyncio re-raises it from a task's step as it does SIGINT's."""


@contextlib.contextmanager
def _sigterm_interrupts(wanted: bool) -> Iterator[None]:
    """While the helpers run in the main thread, SIGTERM stops them as SIGINT does.

    Python's default for SIGTERM kills the process mid-task: the transport's recovery
    brings the task back later, counted as an attempt. Raised here instead, it unwinds the
    run loop, whose consumer hands the task in hand back uncounted. Only the default is
    replaced (a program's own SIGTERM handler is left alone), and only in the main thread
    (the only one a handler can be set from). A second SIGTERM meanwhile kills at once.
    Not for a plain ``process`` run in threads (``child_concurrency`` > 1): no exception
    stops a thread, so the task would be handed back while it still runs
    (``_stop_gracefully`` instead).
    """
    main = threading.current_thread() is threading.main_thread()
    if not wanted or not main or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second one is a forced stop
        raise _Terminated

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def _stop_gracefully(stop: threading.Event) -> Iterator[list[int]]:
    """While a plain ``process`` runs in threads under the helpers, SIGINT and SIGTERM
    ask for a graceful stop, as they do of a supervisor's child; yields the signals seen.

    An exception cannot stop a thread: unwinding the run loop would hand back (to the
    next worker, at attempt 1) a task whose thread runs on, to its end, its result never
    recorded. So the first signal sets ``stop``: nothing new starts, the tasks reserved
    but not started go back uncounted, the running ones finish and are settled as usual;
    then the caller raises what that signal would have (``KeyboardInterrupt``,
    ``SystemExit(143)``). A second signal is a forced stop: the process ends by it at
    once (never exit 0, no ``finally``), and hands back nothing it had started, as its
    threads may still run: the transport's recovery brings those back, counted. Only
    Python's defaults are replaced, and only in the main thread.
    """
    received: list[int] = []
    main = threading.current_thread() is threading.main_thread()
    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    ours = [signum for signum, default in defaults.items() if signal.getsignal(signum) is default]

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if received:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        received.append(signum)
        stop.set()  # (as a child's handler does)

    previous = {signum: signal.signal(signum, on_signal) for signum in ours if main}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def process_queue(queue_name: str, worker_name: str | None = None, quiet: bool = False) -> int:
    """Process the ready tasks of ``queue_name`` in this process; return how many.

    The worker defaults to the one ``asynctask_workers`` names for the queue. Failures are
    retried and sent to the failed store exactly as the workers do; tasks in back-off are
    left for later. Async workers run on an event loop of their own, many tasks at once.
    The worker's ``timeout`` holds: see the module docstring.
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
