"""Run-loop edges in one process, on localmem: sys.exit() in a task, a stop that arrives
while a task is being reserved, timeouts in process_queue, and async workers in it."""

from __future__ import annotations

import asyncio
import sys
import threading
import time

from asynctask import AsyncTaskWorker, get_transport, process_queue
from asynctask.runner import LoopOptions, run_loop
from asynctask.settings import configure, load_settings
from asynctask.testing import unique_queue
from support import drain


class Exiter(AsyncTaskWorker):
    name = "exiter_inline"
    max_retries = 1
    retry_backoff = 0.01
    calls = 0

    def process(self, payload):
        type(self).calls += 1
        sys.exit(3)


def test_sys_exit_in_a_task_is_a_failed_attempt(transport):
    # Given a task whose code calls sys.exit(3) (max_retries 1)
    queue = unique_queue()
    transport.submit_task(queue, {"n": 1})
    # When the run loop takes it
    result = drain(Exiter(), transport, queue)
    # Then each attempt failed like any error and the task is in the failed store
    assert Exiter.calls == 2 and result.failed == 2
    [failed] = transport.failed_tasks(queue)
    assert failed.attempts == 2 and "SystemExit: 3" in failed.error


def test_a_task_reserved_after_the_stop_is_handed_back_unstarted(transport):
    # Given a run loop waiting on an empty queue
    queue = unique_queue()
    calls: list[dict] = []

    class Recorder(AsyncTaskWorker):
        name = "recorder_inline"

        def process(self, payload):
            calls.append(payload)

    options = LoopOptions(wait=5.0)
    loop = threading.Thread(target=run_loop, args=(Recorder(), transport, queue, options))
    loop.start()
    time.sleep(0.3)
    # When SIGTERM's flag is set and a task arrives during that same reserve
    options.stop.set()
    transport.submit_task(queue, {"n": 1})
    loop.join(10)
    assert not loop.is_alive()
    # Then the task never started and is back, its attempt not counted
    assert calls == []
    with transport.consumer(queue) as consumer:
        delivery = consumer.reserve(timeout=1)
        assert delivery is not None and delivery.attempt == 1


class Sleeper(AsyncTaskWorker):
    name = "sleeper_inline"
    timeout = 0.3
    max_retries = 0
    finished: list[str] = []

    def process(self, payload):
        time.sleep(3)
        self.finished.append(threading.current_thread().name)


def _settings(tmp_path):
    configure(load_settings(overrides=["asynctask_transport=localmem:"], environ={}, cwd=tmp_path))


def test_process_queue_stops_a_task_past_its_timeout_in_the_main_thread(tmp_path):
    # Given a task that sleeps 3 s under a 0.3 s timeout, processed in the main thread
    _settings(tmp_path)
    queue = unique_queue()
    get_transport().submit_task(queue, {})
    Sleeper.finished.clear()
    from asynctask.plugins import load_plugins

    load_plugins([]).add_worker(Sleeper, "this test")
    process_queue(queue, "sleeper_inline", quiet=True)
    # Then SIGALRM stopped it mid-task, and it went to the failed store as timed out
    assert Sleeper.finished == []
    [failed] = get_transport().failed_tasks(queue)
    assert "timeout of 0.3 s" in failed.error


def test_process_queue_in_a_thread_counts_a_late_task_as_timed_out(tmp_path):
    # Given the same task processed from another thread (no SIGALRM there)
    _settings(tmp_path)
    queue = unique_queue()
    get_transport().submit_task(queue, {})
    Sleeper.finished.clear()
    from asynctask.plugins import load_plugins

    load_plugins([]).add_worker(Sleeper, "this test")
    thread = threading.Thread(target=process_queue, args=(queue, "sleeper_inline", True))
    thread.start()
    thread.join(30)
    # Then it ran to its end, but counts as timed out: the failed store, not acknowledged
    assert len(Sleeper.finished) == 1
    [failed] = get_transport().failed_tasks(queue)
    assert "timeout of 0.3 s" in failed.error


class AsyncFlaky(AsyncTaskWorker):
    name = "async_flaky_inline"
    max_retries = 0
    seen: list[int] = []

    async def process(self, payload):
        await asyncio.sleep(0.01)
        assert self.delivery is not None
        self.seen.append(payload["n"])
        if payload["n"] % 2:
            raise ValueError(f"odd {payload['n']}")


def test_an_async_process_is_awaited_and_its_error_reaches_the_failed_store(transport):
    # Given async tasks, the odd ones raising
    queue = unique_queue()
    transport.submit_tasks(queue, [{"n": n} for n in range(6)])
    AsyncFlaky.seen.clear()
    # When the run loop takes them
    result = drain(AsyncFlaky(), transport, queue)
    # Then every coroutine ran; the odd ones are in the failed store with their own error
    assert sorted(AsyncFlaky.seen) == list(range(6))
    assert (result.succeeded, result.failed) == (3, 3)
    failed = transport.failed_tasks(queue)
    assert sorted(f.payload["n"] for f in failed) == [1, 3, 5]
    assert all("ValueError: odd" in f.error for f in failed)
    assert transport.queue_stats(queue).in_flight == 0


def test_process_queue_runs_an_async_worker(tmp_path):
    # Given tasks for an async worker registered by an entry point (test_async_raise)
    _settings(tmp_path)
    queue = unique_queue()
    get_transport().submit_tasks(queue, [{"n": n} for n in range(3)])
    # When process_queue takes them in this process
    assert process_queue(queue, "test_async_raise", quiet=True) == 3
    # Then each coroutine ran and its error is in the failed store
    failed = get_transport().failed_tasks(queue)
    assert sorted(f.payload["n"] for f in failed) == [0, 1, 2]
    assert all("async failing on purpose" in f.error for f in failed)


class Hidden(AsyncTaskWorker):
    """A plain def process that returns a coroutine (as a decorator hiding async def would)."""

    name = "hidden_inline"
    max_retries = 0

    def process(self, payload):
        async def work():
            raise AssertionError("never awaited, never acknowledged")

        return work()


def test_a_coroutine_returned_by_a_plain_process_is_never_acknowledged(transport):
    queue = unique_queue()
    transport.submit_task(queue, {"n": 1})
    result = drain(Hidden(), transport, queue)
    assert (result.succeeded, result.failed) == (0, 1)
    [failed] = transport.failed_tasks(queue)
    assert "returned an awaitable without running it" in failed.error


class Unset(AsyncTaskWorker):
    """A worker that leaves ``prefetch`` to the transport."""

    name = "unset_prefetch_inline"

    def process(self, payload):
        return None


def test_a_worker_without_a_prefetch_takes_its_transports_default(tmp_path, monkeypatch):
    # Given a worker class that sets no prefetch, and a transport whose default is 7
    _settings(tmp_path)
    assert Unset.prefetch is None
    transport = get_transport()
    monkeypatch.setattr(type(transport), "default_prefetch", 7)
    asked: list[int] = []
    consumer = transport.consumer

    def spy(queue, prefetch=1, **kwargs):
        asked.append(prefetch)
        return consumer(queue, prefetch, **kwargs)

    monkeypatch.setattr(transport, "consumer", spy)
    queue = unique_queue()
    transport.submit_task(queue, {})
    from asynctask.plugins import load_plugins

    load_plugins([]).add_worker(Unset, "this test")
    # When process_queue drains its queue
    assert process_queue(queue, "unset_prefetch_inline", quiet=True) == 1
    # Then its consumer reserved the transport's default at a time
    assert asked == [7]
