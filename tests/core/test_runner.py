"""The run loop in one process, on localmem: success, retries, the failed store, limits."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from asynctask import (
    AsyncTaskWorker,
    ConfigurationError,
    UnknownWorkerError,
    get_transport,
    process_queue,
    run_worker,
)
from asynctask.ratelimit import RateLimit
from asynctask.settings import configure, load_settings
from asynctask.testing import unique_queue
from support import drain


class Flaky(AsyncTaskWorker):
    name = "flaky_inline"
    max_retries = 2
    retry_backoff = 0.05

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict] = []

    def process(self, payload):
        self.calls.append(payload)
        if payload.get("fail_times", 0) >= len([c for c in self.calls if c == payload]):
            raise ValueError(f"failing {payload}")


class Picky(Flaky):
    name = "picky_inline"
    dont_retry = (KeyError,)

    def process(self, payload):
        self.calls.append(payload)
        raise KeyError("nope")


def test_success_is_acknowledged(transport):
    queue = unique_queue()
    transport.submit_tasks(queue, [{"n": 1}, {"n": 2}])
    worker = Flaky()
    result = drain(worker, transport, queue)
    assert (result.processed, result.succeeded) == (2, 2)
    assert worker.calls == [{"n": 1}, {"n": 2}]
    assert transport.queue_stats(queue).in_flight == 0
    assert transport.failed_tasks(queue) == []


def test_failure_is_retried_with_backoff_then_succeeds(transport):
    queue = unique_queue()
    transport.submit_task(queue, {"fail_times": 2})
    worker = Flaky()
    result = drain(worker, transport, queue)
    # halt waits for back-off: three attempts in all, the last one succeeds
    assert len(worker.calls) == 3
    assert result.succeeded == 1
    assert transport.failed_tasks(queue) == []


def test_spent_retries_go_to_the_failed_store_with_the_traceback(transport, caplog):
    # Given a task that always fails and a worker with max_retries = 2
    queue = unique_queue()
    transport.submit_task(queue, {"fail_times": 99})
    worker = Flaky()
    with caplog.at_level(logging.ERROR):
        drain(worker, transport, queue)
    # Then it ran three times and waits in the failed store with its error
    assert len(worker.calls) == 3
    [failed] = transport.failed_tasks(queue)
    assert failed.attempts == 3
    assert "ValueError: failing" in failed.error and "Traceback" in failed.error
    assert "An unhandled exception occurred while processing the payload" in caplog.text
    # And a person can requeue it
    assert transport.requeue_failed(queue) == 1
    assert transport.poll_queue(queue) == 1


def test_exceptions_that_are_not_retried_fail_at_once(transport):
    queue = unique_queue()
    transport.submit_task(queue, {"x": 1})
    worker = Picky()
    drain(worker, transport, queue)
    assert len(worker.calls) == 1
    [failed] = transport.failed_tasks(queue)
    assert "KeyError" in failed.error and failed.attempts == 1


def test_a_delivery_past_its_last_attempt_is_not_run_again(transport):
    # Given a task whose earlier deliveries all ended with a dead worker
    queue = unique_queue()
    transport.submit_task(queue, {"n": 1})
    for _ in range(3):  # max_retries + 1 deliveries that died
        dying = threading.Thread(target=lambda: transport.consumer(queue).reserve(timeout=1))
        dying.start()
        dying.join()
    worker = Flaky()
    drain(worker, transport, queue)
    # Then the worker does not run it a fourth time: it is in the failed store
    assert worker.calls == []
    [failed] = transport.failed_tasks(queue)
    assert "worker process died" in failed.error


def test_requeue_submits_to_the_tail_of_the_same_queue(transport):
    queue = unique_queue()

    class Requeuer(AsyncTaskWorker):
        name = "requeuer_inline"
        seen: list[dict] = []

        def process(self, payload):
            self.seen.append(payload)
            if payload["n"] < 2:
                self.requeue({"n": payload["n"] + 1})

    transport.submit_task(queue, {"n": 0})
    drain(Requeuer(), transport, queue)
    assert Requeuer.seen == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_the_worker_sees_its_delivery_while_processing(transport):
    queue = unique_queue()

    class Watcher(AsyncTaskWorker):
        name = "watcher_inline"
        seen: list[tuple[str, int]] = []

        def process(self, payload):
            assert self.delivery is not None
            self.seen.append((self.delivery.queue, self.delivery.attempt))
            if self.delivery.attempt == 1:
                raise ValueError("once")

    Watcher.retry_backoff = 0.05
    transport.submit_task(queue, {})
    worker = Watcher()
    drain(worker, transport, queue)
    assert Watcher.seen == [(queue, 1), (queue, 2)]
    assert worker.delivery is None


def test_requeue_outside_a_run_says_why():
    with pytest.raises(RuntimeError, match="only while the worker is processing"):
        Flaky().requeue({})


def test_rate_limit_counts_processed_tasks_not_polls(transport):
    # Given a limit of 3 tasks per 0.5 s and 7 tasks
    queue = unique_queue()
    transport.submit_tasks(queue, [{"n": n} for n in range(7)])
    rate = RateLimit(3, 0.5, queue)
    # Idle polls spend nothing of the budget
    empty = unique_queue()
    drain(Flaky(), transport, empty, rate=rate)
    start = time.monotonic()
    result = drain(Flaky(), transport, queue, rate=rate)
    elapsed = time.monotonic() - start
    # Then 7 tasks need three windows: at least two full periods
    assert result.processed == 7
    assert elapsed >= 1.0


def test_process_queue_and_run_worker_use_the_configured_pairs(tmp_path):
    ledger = tmp_path / "ledger"
    configure(
        load_settings(
            overrides=[
                "asynctask_transport=localmem:",
                'asynctask_workers={"q_inline": "test_record"}',
            ],
            environ={},
            cwd=tmp_path,
        )
    )
    transport = get_transport()
    transport.submit_tasks("q_inline", [{"ledger": str(ledger), "n": n} for n in range(3)])
    assert process_queue("q_inline") == 3
    transport.submit_task("q_inline", {"ledger": str(ledger), "n": 3})
    assert run_worker("test_record") == 1
    assert process_queue("q_inline", "test_record", quiet=True) == 0
    with pytest.raises(ConfigurationError, match='Cannot identify worker for queue "other"'):
        process_queue("other")
    with pytest.raises(ConfigurationError, match='Cannot identify queue for worker "test_fail"'):
        run_worker("test_fail")
    with pytest.raises(
        UnknownWorkerError, match="'nobody' does not exist; known workers: .*test_record"
    ):
        process_queue("q_inline", "nobody")


def test_process_queue_retries_and_fails_like_the_workers(tmp_path):
    configure(load_settings(overrides=["asynctask_transport=localmem:"], environ={}, cwd=tmp_path))
    transport = get_transport()
    queue = unique_queue()
    transport.submit_task(queue, {"n": 1})
    processed = 0
    for _ in range(50):  # test_fail: 3 attempts, 0.1 s then 0.2 s back-off
        processed += process_queue(queue, "test_fail", quiet=True)
        if transport.failed_tasks(queue):
            break
        time.sleep(0.1)
    assert processed == 3
    [failed] = transport.failed_tasks(queue)
    assert "failing on purpose" in failed.error
