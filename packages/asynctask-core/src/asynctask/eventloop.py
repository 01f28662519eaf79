"""The run loop of async and threaded workers: up to ``child_concurrency`` tasks at once.

Threads, and who touches the consumer:

* the calling thread (a child's main thread) owns the consumer: it alone reserves,
  settles and closes, so a consumer is still used from one thread as ``Consumer`` says.
  It starts each task on the event loop and settles each as it ends, in any order;
* ``asynctask-loop`` runs one asyncio event loop: each task is a coroutine on it, the
  worker's ``async def process`` awaited, or a plain ``process`` run in a pool of
  ``child_concurrency`` threads. An ended attempt goes on a queue that the main thread
  reads: nothing on the loop calls the consumer;
* ``asynctask-loop-watch`` logs, with the task's id, a task that holds the loop longer
  than ``BLOCKING_AFTER`` seconds (blocking code in an ``async def process``).

Timeouts. A coroutine past the worker's ``timeout`` is cancelled (it sees
``asyncio.CancelledError``) and counts a failed attempt. One still running
``cancel_grace`` seconds later ignored its cancellation, and a thread past its timeout
cannot be stopped at all: then the child is replaced. It starts nothing new and hands
back what it holds unstarted, uncounted; the stuck task counts a failed attempt at once;
the other running tasks get the grace period to finish, and any still running then count
an attempt too; then the child exits with ``EXIT_TASK_TIMEOUT`` and the supervisor starts
a new one. (``process_queue`` has no child to replace: it returns, and logs what it had
to leave running.)

SIGTERM (``options.stop``): nothing new starts, the running tasks finish (the
supervisor's grace period bounds them), and what the consumer holds unstarted goes back
uncounted when it closes.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import inspect
import logging
import queue as queues
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from asynctask import events
from asynctask.attempts import (
    LoopResult,
    SetupFailed,
    TaskTimeout,
    announce_tracking,
    give_up_if_spent,
    refuse_awaitable,
    refuse_unsigned,
    settle,
    start,
    tracking,
)
from asynctask.draining import DrainCheck, Outage, renew_consumer
from asynctask.errors import TransportUnavailable
from asynctask.worker import CURRENT_DELIVERY

if TYPE_CHECKING:
    from asynctask.runner import LoopOptions
    from asynctask.transport import Consumer, Delivery, Transport
    from asynctask.worker import AsyncTaskWorker

logger = logging.getLogger("asynctask.eventloop")

#: seconds a task may hold the event loop before it is logged as blocking it
BLOCKING_AFTER = 1.0
#: how often the loop notes that it is alive, for the watchdog
_BEAT = 0.1
#: seconds a reserve waits while tasks run: their ends are settled at most this late
_BUSY_WAIT = 0.05
#: tasks started on the loop with one wake-up at most (fewer when the queue runs dry)
_START_BATCH = 32


class ChildReplaced(RuntimeError):
    """A task still running when its child had to be replaced: a failed attempt."""


@dataclass
class _Ended:
    """An attempt that ended on the loop: its error, or None for success."""

    delivery: Delivery
    error: BaseException | None
    #: what ``process()`` returned (stored with the status)
    result: object = None


@dataclass
class _Running:
    delivery: Delivery
    #: when a task still running is stuck (its timeout, plus the cancel grace for a
    #: coroutine); None without a timeout
    stuck_at: float | None


class _Loop:
    """The event loop thread, its thread pool (sync workers), and its watchdog."""

    def __init__(
        self,
        worker: AsyncTaskWorker,
        concurrency: int,
        ended: queues.SimpleQueue[_Ended],
    ) -> None:
        self.worker = worker
        self.ended = ended
        self.loop = asyncio.new_event_loop()
        self.threads = (
            None
            if worker.is_async()
            else ThreadPoolExecutor(concurrency, thread_name_prefix="asynctask-task")
        )
        self.tasks: dict[asyncio.Task[None], Delivery] = {}
        self.beat = time.monotonic()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="asynctask-loop", daemon=True)
        self._thread.start()
        self._watch = threading.Thread(
            target=self._watch_beat, name="asynctask-loop-watch", daemon=True
        )
        self._watch.start()

    # -- the loop thread ----------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        beat = self.loop.create_task(self._heartbeat())
        try:
            self.loop.run_forever()
            beat.cancel()
            pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
            for task in pending:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        finally:
            self.loop.close()

    async def _heartbeat(self) -> None:
        while True:
            self.beat = time.monotonic()
            await asyncio.sleep(_BEAT)

    def _spawn(self, delivery: Delivery) -> None:
        task = self.loop.create_task(self._attempt(delivery))
        self.tasks[task] = delivery
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self.tasks.pop(task, None)

    async def _attempt(self, delivery: Delivery) -> None:
        # Each asyncio task runs in a copy of the context: this is its own delivery.
        CURRENT_DELIVERY.set(delivery)
        worker = self.worker
        timeout = worker.timeout
        began = time.monotonic()
        expired = False
        timer: asyncio.TimerHandle | None = None
        error: BaseException | None = None
        outcome: object = None
        try:
            if self.threads is None:
                if timeout is not None:
                    task = asyncio.current_task()
                    assert task is not None

                    def expire() -> None:
                        nonlocal expired
                        expired = True
                        task.cancel()

                    timer = self.loop.call_later(timeout, expire)
                outcome = await worker.process(delivery.payload)
            else:
                # A thread cannot be cancelled: the main thread replaces the child when
                # one runs past its timeout.
                context = contextvars.copy_context()
                outcome = await self.loop.run_in_executor(
                    self.threads, context.run, worker.process, delivery.payload
                )
                if outcome is not None:
                    refuse_awaitable(worker, outcome)
        except BaseException as exc:  # SystemExit from task code is its failure too
            error = exc
        finally:
            if timer is not None:
                timer.cancel()
        if timeout is not None and (expired or time.monotonic() - began > timeout):
            error = TaskTimeout(timeout)  # even one that swallowed its cancellation
        self.ended.put(_Ended(delivery, error, None if error is not None else outcome))

    # -- from the main thread -----------------------------------------------------------

    def start(self, deliveries: list[Delivery]) -> None:
        """Start attempts on the loop: one wake-up of the loop thread for the batch."""
        self.loop.call_soon_threadsafe(self._spawn_all, deliveries)

    def _spawn_all(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            self._spawn(delivery)

    def call(self, fn: Callable[[], Any], timeout: float | None = None) -> None:
        """Run ``fn`` on the loop (awaited if it returns an awaitable) and wait for it,
        at most ``timeout`` seconds (then the built-in ``TimeoutError``)."""

        async def run() -> None:
            outcome = fn()
            if inspect.isawaitable(outcome):
                await outcome

        asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def close(self, wait: bool) -> None:
        """Stop the loop and the pool; ``wait`` False leaves stuck tasks to the process."""
        self._closing.set()
        self.loop.call_soon_threadsafe(self.loop.stop)
        if wait:
            self._thread.join()
        if self.threads is not None:
            self.threads.shutdown(wait=wait, cancel_futures=True)

    # -- the watchdog thread ------------------------------------------------------------

    def _watch_beat(self) -> None:
        reported: tuple[float, int] | None = None
        while not self._closing.wait(_BEAT * 2):
            beat = self.beat
            lag = time.monotonic() - beat
            if lag <= BLOCKING_AFTER:
                continue
            task = asyncio.current_task(self.loop)
            if reported == (beat, id(task)):
                continue  # this stall is logged already
            reported = (beat, id(task))
            delivery = self.tasks.get(task) if task is not None else None
            logger.warning(
                "Task %s has blocked the event loop for %.1f s: blocking code in an async "
                "process (use await, or a plain process in threads); no other task of this "
                "child runs meanwhile",
                delivery.id if delivery is not None else "(none: worker code)",
                lag,
            )


class _Engine:
    """The main thread's side: reserve, start, settle, wind down. See the module docstring."""

    def __init__(
        self,
        worker: AsyncTaskWorker,
        transport: Transport,
        queue: str,
        options: LoopOptions,
        concurrency: int,
    ) -> None:
        self.worker = worker
        self.transport = transport
        self.queue = queue
        self.options = options
        self.concurrency = concurrency
        self.prefetch = max(options.prefetch, concurrency)
        self.ended: queues.SimpleQueue[_Ended] = queues.SimpleQueue()
        self.running: dict[int, _Running] = {}
        self.result = LoopResult()
        give_up = transport.retry_timeout if options.halt_when_empty else None
        self.outage = Outage(worker.logger, options.stop, give_up)
        self.consumer: Consumer = transport.consumer(
            queue, prefetch=self.prefetch, owner=options.owner
        )
        self.consumer.tracking = tracking(worker, options.track_status)
        announce_tracking(worker, transport, queue, self.consumer.tracking)
        self.loop = _Loop(worker, concurrency, self.ended)
        # a thread is stuck at its timeout (it cannot be cancelled), give or take the
        # moment its result takes to come back
        self._stuck_after = worker.cancel_grace if worker.is_async() else _BUSY_WAIT
        #: (stuck time, running key): the next task to become stuck on top
        self._deadlines: list[tuple[float, int]] = []
        #: reserved and counted as running, to be started on the loop together
        self._to_start: list[Delivery] = []
        #: taken while every slot ran (``_look_ahead``), not counted yet: the next to start
        self._ahead: Delivery | None = None
        #: whether we looked ahead since the last start (once: an empty queue is not polled)
        self._looked = False
        #: stopped by KeyboardInterrupt (SIGINT; SIGTERM under run_worker): wait for
        #: nothing on the loop, where blocking code may hold it for as long as it likes
        self.interrupted = False

    # -- settling -----------------------------------------------------------------------

    def _settle(
        self, delivery: Delivery, error: BaseException | None, result: object = None
    ) -> None:
        try:
            succeeded = settle(self.worker, self.consumer, delivery, error, result)
        except TransportUnavailable as exc:
            # Not settled: the task comes back by the transport's recovery and runs again.
            self.worker.logger.warning("Could not settle task %s: %s", delivery.id, exc)
            return
        finally:
            if self.options.limit is not None:
                self.options.limit.finished(delivery)
        if succeeded:
            self.result.succeeded += 1
        else:
            self.result.failed += 1
        if self.options.on_settled is not None:
            self.options.on_settled(delivery)

    def _take_ended(self, timeout: float) -> None:
        """Settle what has ended, waiting up to ``timeout`` seconds for the first one."""
        if timeout > 0:
            self._flush()  # never wait with tasks reserved but not started
            if self.options.on_idle is not None:
                self.options.on_idle()
        try:
            first = self.ended.get(timeout=timeout) if timeout > 0 else self.ended.get_nowait()
        except queues.Empty:
            return
        batch = [first]
        while True:
            try:
                batch.append(self.ended.get_nowait())
            except queues.Empty:
                break
        for ended in batch:
            if self.running.pop(id(ended.delivery), None) is not None:
                self._settle(ended.delivery, ended.error, ended.result)
            # else: settled already (stuck, then ended during the wind-down)

    # -- starting -----------------------------------------------------------------------

    def _start(self, delivery: Delivery) -> None:
        self.result.processed += 1
        refused = refuse_unsigned(self.worker, self.consumer, delivery)
        # start() before the spent check: a task cancelled while its child ran comes
        # back past its last attempt; start() drops it (never the failed store)
        if (
            not refused
            and self.consumer.tracking
            and start(self.worker, self.consumer, delivery) != "run"
        ):
            if self.options.on_unstarted is not None:
                self.options.on_unstarted(delivery)  # cancelled or expired: never run
            return
        if refused or give_up_if_spent(self.worker, self.consumer, delivery):
            self.result.failed += 1
            if self.options.limit is not None:
                self.options.limit.finished(delivery)
            if self.options.on_unstarted is not None:
                self.options.on_unstarted(delivery)
            return
        timeout = self.worker.timeout
        stuck_at = None if timeout is None else time.monotonic() + timeout + self._stuck_after
        self.running[id(delivery)] = _Running(delivery, stuck_at)
        if stuck_at is not None:
            heapq.heappush(self._deadlines, (stuck_at, id(delivery)))
        self._to_start.append(delivery)
        if len(self._to_start) >= _START_BATCH:
            self._flush()

    def _flush(self) -> None:
        """Start the tasks reserved since the last flush (the loop wakes once for them)."""
        if self._to_start:
            on_start = self.options.on_start
            for delivery in self._to_start:
                if on_start is not None:
                    on_start(delivery)
                events.task_started(self.worker, delivery)
            self.loop.start(self._to_start)
            self._to_start = []

    def _look_ahead(self) -> None:
        """Every slot runs: take the next task now, once, so that the transport's round
        trip for it (and for the tasks it prefetches with it) overlaps the running tasks.

        Taken only when a slot frees, as before, the reserve came after the running
        tasks' ends and held up the next starts: tasks of one ``await`` each start and
        end together, so every wave of them waited for it. pgsql, 100 slots of 50 ms
        sleeps: a RESERVE of 100 rows (with the acknowledgements of the wave before)
        took 9 ms of each wave's 14 ms between the last start and the next (one child,
        load 4: 0.72-0.78x of the ideal 2,000/s). The task waits here uncounted and goes
        through the rate and global limits when a slot frees (``run``); the consumer
        holds no more than it did (``prefetch`` ahead of the running tasks).
        """
        if self._ahead is not None or self._looked:
            return
        self._looked = True
        self._flush()  # the tasks reserved meanwhile start first, not after the trip
        try:
            self._ahead = self.consumer.reserve(timeout=0)
        except TransportUnavailable as exc:
            self.outage.failed(exc)  # the next reserve, when a slot frees, tries again
            return
        self.outage.ok()

    def _release_ahead(self) -> None:
        """Hand back the task taken ahead (never counted, never started)."""
        if self._ahead is not None:
            delivery, self._ahead = self._ahead, None
            self.consumer.release(delivery)

    def _hand_back_unstarted(self) -> None:
        """Release the tasks reserved but not started yet: uncounted, for anyone to take."""
        self._release_ahead()
        for delivery in self._to_start:
            del self.running[id(delivery)]
            self.result.processed -= 1
            self.consumer.release(delivery)
            if self.options.limit is not None:
                self.options.limit.finished(delivery)
        self._to_start = []

    def _stuck(self) -> list[_Running]:
        """The running tasks past their stuck time (a heap: hundreds may run at once)."""
        heap, now, stuck = self._deadlines, time.monotonic(), []
        while heap and heap[0][0] <= now:
            at, key = heapq.heappop(heap)
            running = self.running.get(key)
            if running is not None and running.stuck_at == at:
                stuck.append(running)
        return stuck

    def _next_check(self, longest: float) -> float:
        """Seconds until the next stuck check is due, at most ``longest``."""
        heap = self._deadlines
        while heap and heap[0][1] not in self.running:
            heapq.heappop(heap)  # ended meanwhile
        if not heap:
            return longest
        return max(0.0, min(longest, heap[0][0] - time.monotonic()))

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> LoopResult:
        options = self.options
        limit = options.max_tasks
        drain_check = DrainCheck(self.transport, self.queue)
        idle = False  # stop_when_idle saw nothing ready: finish what runs, then stop
        while True:
            self._take_ended(0)
            stuck = self._stuck()
            if stuck:
                self._replace(stuck)
                return self.result
            if options.stop.is_set():
                self._hand_back_unstarted()
            full = limit is not None and self.result.processed >= limit
            if options.stop.is_set() or full or idle:
                self._release_ahead()
                if not self.running:
                    self.result.recycled = full and not options.stop.is_set()
                    return self.result
                self._take_ended(self._next_check(1.0))
                continue
            if len(self.running) >= self.concurrency:
                self._look_ahead()
                self._take_ended(self._next_check(1.0))
                continue
            if self._to_start:
                wait = 0.0  # a look without waiting: what is ready joins the batch
            elif self.running:
                wait = self._next_check(_BUSY_WAIT)
            else:
                wait = options.wait
            if wait > 0 and options.on_idle is not None:
                options.on_idle()
            delivery: Delivery | None = self._ahead
            self._ahead = None
            try:
                if delivery is None:
                    delivery = self.consumer.reserve(timeout=min(options.wait, wait))
            except TransportUnavailable as exc:
                self.outage.failed(exc)
                if not self.running:  # a new consumer would not hold the running ones
                    self.consumer = renew_consumer(
                        self.transport,
                        self.consumer,
                        self.queue,
                        self.prefetch,
                        options.stop,
                        options.owner,
                    )
                continue
            self.outage.ok()
            if delivery is None:
                self._flush()
                if self.running:
                    continue
                if options.stop_when_idle:
                    idle = True
                elif options.halt_when_empty and drain_check.drained():
                    delayed = self.transport.queue_stats(self.queue).delayed
                    if delayed:
                        self.worker.logger.info(
                            "%d delayed tasks in queue %s are not due yet; not waiting for them",
                            delayed,
                            self.queue,
                        )
                    self.worker.logger.info("No tasks found in queue")
                    return self.result
                continue
            if options.stop.is_set() or not self._may_start(delivery):
                # The stop arrived meanwhile: hand it back unstarted, uncounted.
                self.consumer.release(delivery)
                continue
            self._looked = False
            self._start(delivery)

    def _may_start(self, delivery: Delivery) -> bool:
        """Wait out the rate limit and the global limits (settling meanwhile); False if
        the stop came first."""
        rate, limit = self.options.rate, self.options.limit
        if rate is None and limit is None:
            return True
        while not self.options.stop.is_set():
            pause = 0.0 if rate is None else rate.try_start()
            if pause == 0.0 and limit is not None:
                try:
                    pause = limit.try_start(delivery)
                except TransportUnavailable as exc:
                    self.outage.failed(exc)
                    pause = 1.0
                if pause != 0.0 and rate is not None:
                    rate.give_back()
            if pause == 0.0:
                return True
            self._take_ended(min(pause, self._next_check(pause)))
            if self._stuck():
                return False
        return False

    def _replace(self, stuck: list[_Running]) -> None:
        """A task cannot be stopped: wind the child down so that it can be replaced."""
        worker = self.worker
        timeout = worker.timeout
        assert timeout is not None
        self._hand_back_unstarted()
        for running in stuck:
            what = (
                f"ignored its cancellation for {worker.cancel_grace:g} s"
                if worker.is_async()
                else "runs in a thread, which cannot be stopped"
            )
            worker.logger.error(
                "Task %s ran past its timeout of %g s and %s; this child starts no new task "
                "and is replaced once its other tasks end (grace %g s)",
                running.delivery.id,
                timeout,
                what,
                self.options.grace,
            )
            del self.running[id(running.delivery)]
            self._settle(running.delivery, TaskTimeout(timeout))
        self.result.replaced = True
        deadline = time.monotonic() + self.options.grace
        while self.running and time.monotonic() < deadline:
            self._take_ended(min(0.2, deadline - time.monotonic()))
        for running in list(self.running.values()):
            del self.running[id(running.delivery)]
            self._settle(
                running.delivery,
                ChildReplaced(
                    f"still running {self.options.grace:g} s after its child had to be replaced "
                    "(another task of the child could not be stopped at its timeout)"
                ),
            )

    def close(self) -> None:
        stuck = self.result.replaced
        try:
            self.consumer.close()
        finally:
            self.loop.close(wait=not stuck and not self.interrupted)
            if stuck and self.options.on_timeout is None:
                logger.error(
                    "Left a task running past its timeout: Python cannot stop it in this "
                    "process (run the worker with `asynctask workers` to have it replaced)"
                )


def run_concurrent(
    worker: AsyncTaskWorker,
    transport: Transport,
    queue: str,
    options: LoopOptions,
    with_setup: bool,
) -> LoopResult:
    """Run up to ``child_concurrency`` tasks at once until stopped, recycled or drained.

    With ``with_setup``, the worker's ``setup``/``teardown`` run first and last (on the
    event loop when they are ``async def``).
    """
    concurrency = options.child_concurrency or type(worker).concurrency()
    worker._transport, worker._queue_name = transport, queue
    engine = _Engine(worker, transport, queue, options, concurrency)
    try:
        if with_setup:
            try:
                engine.loop.call(worker.setup)
            except Exception as exc:
                raise SetupFailed(exc) from exc
        try:
            result = engine.run()
        except KeyboardInterrupt:
            # SIGINT (or run_worker's SIGTERM) in process_queue/run_worker: the consumer's
            # close hands the running tasks back; teardown gets cancel_grace on the loop
            engine.interrupted = True
            raise
        finally:
            if with_setup and not engine.result.replaced:
                _teardown(engine, worker)
    finally:
        if options.on_idle is not None:
            options.on_idle()
        engine.close()
        worker._transport = worker._queue_name = None
    if result.replaced and options.on_timeout is not None:
        options.on_timeout()
    return result


def _teardown(engine: _Engine, worker: AsyncTaskWorker) -> None:
    if not engine.interrupted:
        engine.loop.call(worker.teardown)
        return
    try:
        engine.loop.call(worker.teardown, timeout=worker.cancel_grace)
    except TimeoutError:
        logger.warning(
            "Interrupted: the worker's teardown did not end within cancel_grace (%g s) on an "
            "event loop a task still held; not waiting for it",
            worker.cancel_grace,
        )
