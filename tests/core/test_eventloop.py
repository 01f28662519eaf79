"""The event-loop run loop in one process, on localmem: async and threaded workers keep
the same rules as sync ones (retries, dont_retry, rate limits, max_tasks_per_child,
setup/teardown) and a task blocking the loop is named in the log."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from asynctask import AsyncTaskWorker
from asynctask.ratelimit import RateLimit
from asynctask.runner import LoopOptions, run_loop, serve
from asynctask.testing import unique_queue
from support import drain


class Flaky(AsyncTaskWorker):
    name = "async_flaky_loop"
    max_retries = 2
    retry_backoff = 0.05
    dont_retry = (KeyError,)

    def __init__(self) -> None:
        super().__init__()
        self.attempts: list[tuple[int, int]] = []

    async def process(self, payload):
        assert self.delivery is not None
        self.attempts.append((payload["n"], self.delivery.attempt))
        await asyncio.sleep(0.01)
        if payload.get("key"):
            raise KeyError("not retried")
        if self.delivery.attempt <= payload.get("fail_times", 0):
            raise ValueError("once more")


def test_async_retries_back_off_and_dont_retry_as_sync_ones_do(transport):
    # Given tasks that succeed, fail once, always fail, and raise a dont_retry error
    queue = unique_queue()
    transport.submit_tasks(
        queue, [{"n": 0}, {"n": 1, "fail_times": 1}, {"n": 2, "fail_times": 9}, {"n": 3, "key": 1}]
    )
    worker = Flaky()
    drain(worker, transport, queue)
    # Then each got the attempts the sync loop would give it
    tries = {n: sorted(a for m, a in worker.attempts if m == n) for n in range(4)}
    assert tries == {0: [1], 1: [1, 2], 2: [1, 2, 3], 3: [1]}
    failed = {f.payload["n"]: f for f in transport.failed_tasks(queue)}
    assert sorted(failed) == [2, 3]
    assert failed[2].attempts == 3 and "ValueError: once more" in failed[2].error
    assert failed[3].attempts == 1 and "KeyError" in failed[3].error


class Gauge(AsyncTaskWorker):
    name = "async_gauge_loop"
    child_concurrency = 4

    def __init__(self) -> None:
        super().__init__()
        self.now = self.peak = 0
        self.events: list[str] = []

    async def setup(self):
        await asyncio.sleep(0)
        self.events.append("setup")

    async def teardown(self):
        await asyncio.sleep(0)
        self.events.append("teardown")

    async def process(self, payload):
        self.now += 1
        self.peak = max(self.peak, self.now)
        await asyncio.sleep(0.05)
        self.now -= 1


def test_max_tasks_recycles_after_the_running_ones_end(transport):
    # Given 10 tasks and a limit of 6 per child, 4 at once
    queue = unique_queue()
    transport.submit_tasks(queue, [{"n": n} for n in range(10)])
    worker = Gauge()
    result = drain(worker, transport, queue, max_tasks=6)
    # Then 6 ran, none was cut short, and the other 4 wait their turn, unstarted
    assert (result.processed, result.succeeded, result.recycled) == (6, 6, True)
    assert worker.peak == 4
    stats = transport.queue_stats(queue)
    assert (stats.ready, stats.in_flight) == (4, 0)


def test_async_setup_and_teardown_run_on_the_loop(transport):
    queue = unique_queue()
    transport.submit_tasks(queue, [{"n": n} for n in range(3)])
    worker = Gauge()
    options = LoopOptions(halt_when_empty=True, wait=0.05)
    assert serve(worker, transport, queue, options).succeeded == 3
    assert worker.events == ["setup", "teardown"]


def test_rate_limit_holds_for_concurrent_tasks(transport):
    # Given 7 tasks, 4 slots, and at most 3 starts per 0.5 s
    queue = unique_queue()
    transport.submit_tasks(queue, [{"n": n} for n in range(7)])
    began = time.monotonic()
    result = drain(Gauge(), transport, queue, rate=RateLimit(3, 0.5, queue))
    # Then 7 starts need three windows: at least two full periods
    assert result.processed == 7
    assert time.monotonic() - began >= 1.0


class Threaded(AsyncTaskWorker):
    name = "threaded_loop"
    child_concurrency = 5
    max_retries = 0

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[str] = set()
        self.lock = threading.Lock()
        # all five at once, whatever the load (a sleep let a fast thread take a second
        # task under load 20, and the set held 4 names)
        self.together = threading.Barrier(self.child_concurrency, timeout=30)

    def process(self, payload):
        with self.lock:
            self.threads.add(threading.current_thread().name)
        assert self.delivery is not None and self.delivery.payload == payload
        self.together.wait()  # broken (and the task failed) unless 5 run at once
        if payload["n"] == 3:
            raise ValueError("three")


def test_a_sync_worker_with_child_concurrency_runs_in_threads(transport):
    queue = unique_queue()
    transport.submit_tasks(queue, [{"n": n} for n in range(5)])
    worker = Threaded()
    result = drain(worker, transport, queue)
    assert (result.succeeded, result.failed) == (4, 1)
    assert len(worker.threads) == 5
    [failed] = transport.failed_tasks(queue)
    assert failed.payload == {"n": 3}


class Blocker(AsyncTaskWorker):
    name = "blocker_loop"

    async def process(self, payload):
        if payload.get("block"):
            time.sleep(1.5)  # sync code in an async task: the loop stops
        await asyncio.sleep(0)


def test_a_task_blocking_the_loop_is_logged_with_its_id(transport, caplog):
    queue = unique_queue()
    [blocking] = transport.submit_tasks(queue, [{"block": True}])
    with caplog.at_level(logging.WARNING, logger="asynctask.eventloop"):
        drain(Blocker(), transport, queue)
    [record] = [r for r in caplog.records if "blocked the event loop" in r.getMessage()]
    assert blocking in record.getMessage()


def test_stop_lets_running_tasks_finish_and_hands_back_the_rest_uncounted(transport):
    # Given 4 running tasks of a 4-slot child, 6 more waiting
    queue = unique_queue()
    transport.submit_tasks(queue, [{"n": n} for n in range(10)])

    class Slow(Gauge):
        name = "slow_gauge_loop"
        started: list[int] = []

        async def process(self, payload):
            self.started.append(payload["n"])
            await asyncio.sleep(0.5)

    options = LoopOptions(wait=0.05, prefetch=8)
    loop = threading.Thread(target=run_loop, args=(Slow(), transport, queue, options))
    loop.start()
    while len(Slow.started) < 4:
        time.sleep(0.01)
    # When the stop comes (SIGTERM)
    options.stop.set()
    loop.join(10)
    # Then the four ran to their end and nothing else started; the rest is back, unspent
    assert sorted(Slow.started) == [0, 1, 2, 3]
    stats = transport.queue_stats(queue)
    assert (stats.ready, stats.in_flight) == (6, 0)
    with transport.consumer(queue) as consumer:
        delivery = consumer.reserve(timeout=1)
        assert delivery is not None and delivery.attempt == 1


def test_with_every_slot_busy_the_next_task_is_reserved_while_they_run(transport):
    # Given 12 tasks of 50 ms for 4 slots, and each reserve noting how many tasks had
    # been started and not yet settled when it was asked
    queue = unique_queue()
    transport.submit_tasks(queue, [{"n": n} for n in range(12)])
    worker = Gauge()
    started, settled, busy = [0], [0], []
    make = transport.consumer

    def consumer(*args, **kwargs):
        made = make(*args, **kwargs)
        reserve = made.reserve

        def noted(timeout):
            busy.append(started[0] - settled[0])
            return reserve(timeout)

        made.reserve = noted
        return made

    transport.consumer = consumer
    on_start = lambda delivery: started.__setitem__(0, started[0] + 1)  # noqa: E731
    on_settled = lambda delivery: settled.__setitem__(0, settled[0] + 1)  # noqa: E731
    result = drain(worker, transport, queue, on_start=on_start, on_settled=on_settled)
    # Then a reserve went out while all four ran: a transport's round trip for the next
    # tasks overlaps the running ones instead of holding up the next starts (pgsql, 100
    # slots of 50 ms sleeps: a RESERVE of 100 took 9 ms of each wave's 14 ms stall)
    assert result.succeeded == 12
    assert max(busy) == 4
