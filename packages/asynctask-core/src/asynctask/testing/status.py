"""The status contract: DESIGN.md section 6 (``asynctask.status``), as one mixin.

A transport's contract class adds it once its transport keeps task status::

    class TestRedisTransport(TransportContract, StatusContract):
        ...                      # the same fixtures as TransportContract

What the transport must give for these tests, beyond the API:

* ``_state_store()`` returns the same object every time, so that a test can set its
  ``fallback_poll`` (the re-read interval of ``wait``: these tests set 10 s and still
  expect ``wait`` to return within 1 s of the outcome, so ``wait`` must be woken by
  the backend);
* the fused writes of its consumers use ``transport.status_ttl`` at the moment a status
  becomes final (the TTL test sets 2 s on the transport object that settles the task);
* with ``transport.state_uri`` naming another store (``asynctask_state``), ``_put``
  and the consumer write no status of their own (``transport.own_state`` is False).
  The fixture ``state_store_uri`` names that other store: by default an in-process
  ``localmem:`` one, which any transport can use from the test process; override it to
  try another.

Workers run where a real worker would: in a child process (a thread for ``localmem``,
whose store lives in one process), through the real run loop (``asynctask.runner``).
The cancel of a task running under a supervisor (its child replaced) needs
``asynctask workers``: ``SupervisedStatusContract`` (``asynctask.testing.supervised``),
which a transport whose store other processes share adds beside this one. The cancel
of a task running in a run loop (``process_queue``) is here.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue as queue_module
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from asynctask.runner import LoopOptions, run_loop
from asynctask.status import StatusNotTracked, TaskStatus
from asynctask.testing.contract import open_transport
from asynctask.testing.services import unique_queue
from asynctask.transport import Transport
from asynctask.validation import Payload
from asynctask.worker import AsyncTaskWorker

#: the contract's bound on ``wait``: it returns within this many seconds of the outcome
WAIT_BOUND = 1.0
#: the fallback poll the contract sets: a ``wait`` that polls instead of being woken
#: misses ``WAIT_BOUND`` by far
FALLBACK_POLL = 10.0


class StatusWorker(AsyncTaskWorker):
    """The contract's worker, driven by its payload.

    ``{"gate": true}``: report ``("started", id, attempt)``, then wait for a token on the
    gate; ``{"fail": true}`` raises; ``{"result": value}`` returns ``value``.
    """

    name = "asynctask_status_contract"
    max_retries = 1
    #: long enough for the test to read ``retrying`` on a loaded machine
    retry_backoff = 2.0
    prefetch = 1

    report: Any = None
    gate: Any = None

    def process(self, payload: Payload) -> Any:
        delivery = self.delivery
        assert delivery is not None
        if self.report is not None:
            self.report.put(("started", delivery.id, delivery.attempt))
        if payload.get("gate"):
            self.gate.get(timeout=60)
        if payload.get("fail"):
            raise RuntimeError(f"boom on attempt {delivery.attempt}")
        return payload.get("result")


def _work(
    transport: Transport, queue: str, report: Any, gate: Any, count: int, idle: bool = False
) -> None:
    """Run the real run loop on ``queue`` until ``count`` tasks were taken (or 60 s);
    with ``idle``, until nothing is ready too."""
    worker = StatusWorker()
    worker.report, worker.gate = report, gate
    stop = threading.Event()
    timer = threading.Timer(60, stop.set)
    timer.daemon = True
    timer.start()
    try:
        options = LoopOptions(max_tasks=count, wait=0.1, stop=stop, stop_when_idle=idle)
        run_loop(worker, transport, queue, options)
    finally:
        timer.cancel()
    report.put(("done", None, 0))


def _in_status_child(uri: str, state_uri: str | None, job: Callable[..., None], *args: Any) -> None:
    """Run ``job`` on a transport of this child process, keeping its statuses where the
    test's transport keeps them (``asynctask_state``), as a worker's settings would."""
    transport = open_transport(uri)
    transport.state_uri = state_uri
    try:
        job(transport, *args)
    finally:
        transport.close()


def _submit_unique(transport: Transport, queue: str, key: str, go: Any, report: Any) -> None:
    """Say "ready"; once ``go`` is set, submit 100 tasks with one unique key; report the
    ids seen."""
    report.put("ready")
    go.wait(60)
    ids = {transport.submit_task(queue, {"n": n}, unique_key=key) for n in range(100)}
    report.put(sorted(ids))


def _wait_until(read: Callable[[], Any], accept: Callable[[Any], bool], timeout: float) -> Any:
    """Read until ``accept(value)`` (every 20 ms, ``timeout`` s at most); the last value."""
    deadline = time.monotonic() + timeout
    value = read()
    while not accept(value) and time.monotonic() < deadline:
        time.sleep(0.02)
        value = read()
    return value


class StatusContract:
    """The shared status suite; fixtures ``transport``, ``queue``, ``probe`` come from
    ``TransportContract``."""

    # -- fixtures and helpers ---------------------------------------------------------

    @pytest.fixture
    def state_store_uri(self) -> str:
        """Another store for ``asynctask_state`` (default: an in-process one)."""
        return "localmem:" + unique_queue("state")

    @pytest.fixture
    def apart(self, transport: Transport) -> Iterator[Callable[..., Any]]:
        """Start ``job(transport, *args)`` in a child process (a thread for an in-process
        store); every child still alive at the end of the test is killed."""
        started: list[Any] = []

        def start(job: Callable[..., None], *args: Any) -> Any:
            if transport.features.multiprocess:
                ctx = multiprocessing.get_context("spawn")
                handle: Any = ctx.Process(
                    target=_in_status_child,
                    args=(transport.uri, transport.state_uri, job, *args),
                    daemon=True,
                )
            else:
                handle = threading.Thread(target=job, args=(transport, *args), daemon=True)
            handle.start()
            started.append(handle)
            return handle

        yield start
        for handle in started:
            handle.join(10)
            if isinstance(handle, multiprocessing.process.BaseProcess) and handle.is_alive():
                handle.kill()
                handle.join(10)

    @staticmethod
    def _channel(transport: Transport) -> Any:
        """A queue between the test and its child (a plain one for a thread)."""
        if transport.features.multiprocess:
            return multiprocessing.get_context("spawn").Queue()
        return queue_module.Queue()

    @staticmethod
    def _event(transport: Transport) -> Any:
        if transport.features.multiprocess:
            return multiprocessing.get_context("spawn").Event()
        return threading.Event()

    @staticmethod
    def _finish(transport: Transport, queue: str, result: Any = None) -> str:
        """Take the next task through a consumer in this process and let it succeed."""
        with transport.consumer(queue) as consumer:
            delivery = consumer.reserve(timeout=10)
            assert delivery is not None, "no task to finish"
            assert consumer.start(delivery) == "run"
            result_json = None if result is None else _json(result)
            consumer.ack(delivery, result_json)
            # as the run loop does: the outcome goes to the store of asynctask_state
            consumer.record_outcome(delivery, "succeeded", result_json=result_json)
            return delivery.id

    # -- the states a task goes through ------------------------------------------------

    def test_a_task_that_succeeds_goes_queued_running_succeeded(self, transport, queue, apart):
        """Fails if a state is skipped or late: ``running`` only once a worker started it
        (checked against a localmem whose start() wrote nothing: it read queued while
        the task ran), ``succeeded`` with its result, times and attempts."""
        # Given a task just submitted, and a delayed one
        submitted = time.time()
        tid = transport.submit_task(queue, {"gate": True, "result": {"n": 1}})
        later = transport.submit_task(queue, {"n": 2}, delay=60)
        first = transport.status(tid)
        assert first is not None and (first.id, first.queue) == (tid, queue)
        assert (first.state, first.attempts, first.started_at, first.result) == (
            "queued",
            0,
            None,
            None,
        )
        assert first.submitted_at is not None and abs(first.submitted_at - submitted) < 5
        delayed = transport.status(later)
        assert delayed is not None and delayed.state == "delayed"
        # When a worker in another process starts it
        report, gate = self._channel(transport), self._channel(transport)
        apart(_work, queue, report, gate, 1)
        assert report.get(timeout=60)[:2] == ("started", tid)
        # Then it reads running, one attempt, its start time set
        running = transport.status(tid)
        assert running is not None and running.state == "running", running
        assert running.attempts == 1 and running.started_at is not None
        assert running.finished_at is None and not running.final
        # When it returns a result
        gate.put("go")
        done = transport.wait(tid, timeout=30)
        # Then it succeeded with that result, finished after it started
        assert done.state == "succeeded" and done.final, done
        assert done.result == {"n": 1} and done.error is None and done.attempts == 1
        assert done.started_at is not None and done.finished_at is not None
        assert done.submitted_at is not None
        assert done.submitted_at <= done.started_at <= done.finished_at
        assert report.get(timeout=30)[0] == "done"
        # And the delayed one is still delayed; an unknown id has no status
        still = transport.status(later)
        assert still is not None and still.state == "delayed"
        assert transport.status("0" * 32) is None

    def test_a_prefetched_task_reads_queued_until_it_starts(self, transport, queue):
        """``running`` means a worker started the task, not that a consumer holds it:
        with a prefetch of 3, the task started reads running and the two reserved
        behind it read queued. Fails against a localmem whose reserve marked every task
        it handed out running (all three read running)."""
        # Given three tasks, all reserved by one consumer, the first started
        ids = transport.submit_tasks(queue, [{"n": n} for n in range(3)])

        def read() -> list[str | None]:
            return [s.state if s else None for s in transport.statuses(ids)]

        with transport.consumer(queue, prefetch=3) as consumer:
            first = consumer.reserve(timeout=10)
            assert first is not None and first.id == ids[0]
            assert consumer.start(first) == "run"
            held = [consumer.reserve(timeout=10) for _ in range(2)]
            assert [d.id if d else None for d in held] == ids[1:]
            # Then the started one is running (a mark may be sent a moment later), the
            # two held behind it queued
            consumer.flush_status_feed()
            states = _wait_until(read, lambda s: s[0] != "queued", 2)
            assert states == ["running", "queued", "queued"], states
            # (and each runs in its turn)
            for delivery in (first, *held):
                assert delivery is not None
                if delivery is not first:
                    assert consumer.start(delivery) == "run"
                consumer.ack(delivery)
                consumer.record_outcome(delivery, "succeeded")
        assert [transport.wait(i, timeout=10).state for i in ids] == ["succeeded"] * 3

    def test_a_task_that_retries_then_fails_goes_through_retrying_to_failed(
        self, transport, queue, apart
    ):
        """Fails if a retry is not ``retrying`` with its error, or the failure is not
        ``failed`` with both attempts (checked against a localmem whose retry wrote
        nothing: it read running during the back-off); a requeue makes it ``queued``."""
        # Given a task that fails every time, on a worker with one retry (2 s back-off)
        tid = transport.submit_task(queue, {"gate": True, "fail": True})
        report, gate = self._channel(transport), self._channel(transport)
        apart(_work, queue, report, gate, 2)
        # When its first attempt starts, then fails
        assert report.get(timeout=60) == ("started", tid, 1)
        running = transport.status(tid)
        assert running is not None and (running.state, running.attempts) == ("running", 1)
        gate.put("go")
        # Then it is retrying, with the error and one attempt
        retrying = _wait_until(
            lambda: transport.status(tid), lambda s: s is not None and s.state != "running", 5
        )
        assert retrying is not None and retrying.state == "retrying", retrying
        assert retrying.attempts == 1 and "boom on attempt 1" in (retrying.error or "")
        assert not retrying.final
        # When the second attempt starts, then fails
        assert report.get(timeout=30) == ("started", tid, 2)
        again = transport.status(tid)
        assert again is not None and (again.state, again.attempts) == ("running", 2)
        gate.put("go")
        failed = transport.wait(tid, timeout=30)
        # Then it failed, with two attempts and the last error, and is in the failed store
        assert failed.state == "failed" and failed.attempts == 2, failed
        assert "boom on attempt 2" in (failed.error or "") and failed.result is None
        assert [f.id for f in transport.failed_tasks(queue)] == [tid]
        assert report.get(timeout=30)[0] == "done"
        # When it is requeued from the failed store, it is queued again
        assert transport.requeue_failed(queue, [tid]) == 1
        requeued = transport.status(tid)
        assert requeued is not None and requeued.state == "queued"

    def test_a_task_cancelled_while_waiting_never_runs(self, transport, queue, probe, apart):
        """Fails if a cancelled task still runs or lands in the failed store (checked
        against a localmem whose start() ignored the cancel: the worker ran it)."""
        # Given two waiting tasks, and a third reserved ahead by a consumer (not started)
        doomed, kept = transport.submit_tasks(queue, [{"n": 1}, {"n": 2}])
        # When the first is cancelled
        assert transport.cancel(doomed) is True
        # Then it reads cancelled at once, for good, and a second cancel changes nothing
        cancelled = transport.status(doomed)
        assert cancelled is not None and cancelled.state == "cancelled" and cancelled.final
        assert cancelled.finished_at is not None and cancelled.attempts == 0
        assert transport.wait(doomed, timeout=1).state == "cancelled"
        assert transport.cancel(doomed) is False
        # When a worker in another process drains the queue
        report, gate = self._channel(transport), self._channel(transport)
        apart(_work, queue, report, gate, 2, True)
        started = report.get(timeout=60)
        assert started[:2] == ("started", kept), f"the cancelled task ran: {started}"
        assert transport.wait(kept, timeout=30).state == "succeeded"
        assert report.get(timeout=30)[0] == "done"
        # Then the cancelled one never ran, is not in the failed store, is stored nowhere
        assert transport.failed_tasks(queue) == []
        assert probe.stored(queue) == 0
        assert transport.cancel(kept) is False  # final already
        # And a task prefetched behind another (reserved, not started) is dropped by
        # start(), not run. (The first task of a reserve may count as started by the
        # reserve itself: the run loop starts it at once.)
        first, ahead = transport.submit_tasks(queue, [{"n": 3}, {"n": 4}])
        with transport.consumer(queue, prefetch=2) as consumer:
            running = consumer.reserve(timeout=10)
            assert running is not None and running.id == first
            assert consumer.start(running) == "run"
            delivery = consumer.reserve(timeout=10)
            assert delivery is not None and delivery.id == ahead
            assert transport.cancel(ahead) is True
            assert consumer.start(delivery) == "cancelled"
            consumer.ack(running)
        status = transport.status(ahead)
        assert status is not None and status.state == "cancelled"
        assert probe.stored(queue) == 0 and transport.failed_tasks(queue) == []

    def test_a_task_cancelled_while_running_in_process_stays_cancelled(
        self, transport, queue, probe, caplog
    ):
        """Under a run loop (``process_queue``) a task cancelled while it runs keeps no
        result when it returns, and is neither retried nor failed when it raises, on
        its first attempt or its last, and the log says so. Fails if a cancelled task
        that raised is retried or put in the failed store (checked against filesys and
        AMQP retry/fail that did not look for the cancel: the task started again at
        attempt 2), or if the log says it was (localmem, pgsql, redis: their retry/fail
        dropped it, but the run loop logged "retrying in" and "moved to the failed
        store")."""
        caplog.set_level(logging.WARNING)
        # Given three tasks for a worker with one retry (2 s back-off), run in process
        kept = transport.submit_task(queue, {"gate": True, "result": "discarded"})
        raised = transport.submit_task(queue, {"gate": True, "fail": True})
        last = transport.submit_task(queue, {"gate": True, "fail": True})
        report: Any = queue_module.Queue()
        gate: Any = queue_module.Queue()
        loop = threading.Thread(target=_work, args=(transport, queue, report, gate, 4))
        loop.start()
        try:
            # When the first is cancelled while it runs, then returns a result
            assert report.get(timeout=60) == ("started", kept, 1)
            assert transport.cancel(kept) is True
            gate.put("go")
            # And the second is cancelled while it runs, then raises (a retry left)
            assert report.get(timeout=30) == ("started", raised, 1)
            assert transport.cancel(raised) is True
            gate.put("go")
            # And the third raises once, then is cancelled on its last attempt and raises
            assert report.get(timeout=30) == ("started", last, 1)
            gate.put("go")
            assert report.get(timeout=30) == ("started", last, 2), "a cancelled task ran"
            assert transport.cancel(last) is True
            gate.put("go")
            assert report.get(timeout=30)[0] == "done"
        finally:
            for _ in range(4):
                gate.put("go")  # a loop stuck on a gate ends
            loop.join(30)
        # Then all three stay cancelled, the result discarded; none waits or failed
        states = [(s.state, s.attempts, s.result) for s in transport.statuses([kept, raised, last])]
        assert states == [
            ("cancelled", 1, None),
            ("cancelled", 1, None),
            ("cancelled", 2, None),
        ], f"(state, attempts, result) of kept, raised, last: {states}"
        failed = [f.id for f in transport.failed_tasks(queue)]
        assert failed == [], f"in the failed store: {failed}; ids {[kept, raised, last]}"
        # And the log says what happened, not a retry or a failure
        for dropped in (raised, last):
            assert (
                f"Task {dropped} was cancelled while it ran, then raised RuntimeError; it "
                "stays cancelled" in caplog.text
            ), caplog.text
        assert f"(task {raised}, attempt 1 of 2); retrying in" not in caplog.text
        assert f"(task {last}, attempt 1 of 2); retrying in" in caplog.text  # not cancelled
        assert f"Task {last} failed on attempt 2" not in caplog.text
        time.sleep(2.5)  # a retry scheduled by mistake would be due by now
        assert probe.stored(queue) == 0

    def test_a_task_that_expires_before_a_worker_is_free_never_runs(
        self, transport, queue, probe, apart
    ):
        """Fails if an expired task runs, or reads anything but ``expired`` once its time
        has passed (checked against a localmem that ignored expires: it ran)."""
        # Given a task that expires in 1.5 s, and one with time to spare
        stale = transport.submit_task(queue, {"n": 1}, expires=1.5)
        fresh = transport.submit_task(queue, {"n": 2}, expires=600)
        waiting = transport.status(stale)
        assert waiting is not None and waiting.state == "queued"
        # When no worker is free until it is past its time
        time.sleep(2.0)
        # Then it reads expired (final), and wait returns at once
        expired = transport.status(stale)
        assert expired is not None and expired.state == "expired" and expired.final
        assert transport.wait(stale, timeout=1).state == "expired"
        # When a worker comes
        report, gate = self._channel(transport), self._channel(transport)
        apart(_work, queue, report, gate, 2, True)
        assert report.get(timeout=60)[:2] == ("started", fresh), "the expired task ran"
        assert transport.wait(fresh, timeout=30).state == "succeeded"
        assert report.get(timeout=30)[0] == "done"
        # Then the expired one never ran and went to no failed store
        assert transport.failed_tasks(queue) == []
        assert probe.stored(queue) == 0
        final = transport.status(stale)
        assert final is not None and final.state == "expired" and final.started_at is None

    # -- results ------------------------------------------------------------------------

    def test_results_round_trip(self, transport, queue, apart):
        """Every JSON value a worker in another process returns reads back equal."""
        values: list[Any] = [
            {"text": "héllo ✓", "nested": {"a": [1, 2.5, None, True, {"b": []}]}},
            [1, "two", 3.0],
            "plain text",
            0,
            False,
            None,
        ]
        ids = [transport.submit_task(queue, {"result": value}) for value in values]
        report, gate = self._channel(transport), self._channel(transport)
        apart(_work, queue, report, gate, len(values))
        for task_id, value in zip(ids, values, strict=True):
            done = transport.wait(task_id, timeout=30)
            assert done.state == "succeeded" and done.result == value, (value, done)

    def test_a_result_that_is_not_json_or_too_big_is_not_stored(self, transport, queue, caplog):
        """The task still succeeds, without a result, and the log says why."""
        # Given a result that is not JSON and one over the payload limit
        transport.max_payload_bytes = 1024
        odd = transport.submit_task(queue, {})
        big = transport.submit_task(queue, {})
        worker = StatusWorker()
        results = iter([{1, 2}, "x" * 2000])
        worker.process = lambda payload: next(results)  # type: ignore[method-assign]
        # When a worker runs both
        with caplog.at_level(logging.WARNING):
            run_loop(worker, transport, queue, LoopOptions(max_tasks=2, wait=0.1))
        # Then both succeeded without a result, and the log names each reason
        for task_id in (odd, big):
            done = transport.status(task_id)
            assert done is not None and (done.state, done.result) == ("succeeded", None)
        text = caplog.text
        assert f"Task {odd} succeeded, but its result is not stored: it is not JSON" in text
        assert f"Task {big} succeeded, but its result is not stored: 2002 bytes" in text
        assert "asynctask_max_payload_bytes" in text

    # -- wait ---------------------------------------------------------------------------

    def test_wait_is_woken_by_the_backend_within_a_second(self, transport, queue, apart):
        """With the fallback poll at 10 s, ``wait`` returns within 1 s of the outcome
        (checked against a localmem whose wait slept out its fallback poll: 10 s)."""
        # Given a waiter blocked on a task running in another process, polling every 10 s
        transport.state().fallback_poll = FALLBACK_POLL
        tid = transport.submit_task(queue, {"gate": True, "result": "ok"})
        report, gate = self._channel(transport), self._channel(transport)
        apart(_work, queue, report, gate, 1)
        assert report.get(timeout=60)[:2] == ("started", tid)
        got: list[tuple[TaskStatus, float]] = []
        waiter = threading.Thread(
            target=lambda: got.append((transport.wait(tid, timeout=30), time.monotonic()))
        )
        waiter.start()
        time.sleep(0.5)  # the waiter is blocked by now
        assert not got, "wait returned before the task ended"
        # When the task ends
        ended = time.monotonic()
        gate.put("go")
        waiter.join(30)
        # Then the waiter saw it within the bound
        assert got, "wait did not return"
        status, woke = got[0]
        assert status.state == "succeeded" and status.result == "ok"
        assert woke - ended < WAIT_BOUND, f"wait returned {woke - ended:.2f} s after the end"
        # And a wait that times out raises the built-in TimeoutError, soon after its timeout
        other = transport.submit_task(queue, {"n": 1})
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            transport.wait(other, timeout=0.3)
        assert time.monotonic() - began < 0.3 + WAIT_BOUND
        with pytest.raises(LookupError):
            transport.wait("0" * 32, timeout=1)

    # -- uniqueness ---------------------------------------------------------------------

    def test_a_unique_key_makes_one_task_across_processes(self, transport, queue, probe, apart):
        """Two processes submit one key 100 times each at once: exactly one task; a new
        one once it is final (checked against a localmem whose key check was not in
        the same critical section as the put: several tasks were stored)."""
        # Given two processes ready to submit the same key
        go, report = self._event(transport), self._channel(transport)
        key = "welcome:" + unique_queue("k")
        apart(_submit_unique, queue, key, go, report)
        apart(_submit_unique, queue, key, go, report)
        assert [report.get(timeout=60) for _ in range(2)] == ["ready", "ready"]
        # When both submit it 100 times at once
        go.set()
        seen = report.get(timeout=60) + report.get(timeout=60)
        # Then every submit returned the same id, and one task is stored
        assert len(set(seen)) == 1, f"{len(set(seen))} tasks for one unique key"
        (tid,) = set(seen)
        assert probe.stored(queue) == 1
        assert transport.submit_task(queue, {"n": -1}, unique_key=key) == tid
        status = transport.status(tid)
        assert status is not None and status.state == "queued"
        # When it finishes, the key is free: a new task is created
        assert self._finish(transport, queue) == tid
        fresh = transport.submit_task(queue, {"n": 0}, unique_key=key)
        assert fresh != tid and probe.stored(queue) == 1
        # And a cancel frees it too; another queue's key is another key
        assert transport.cancel(fresh) is True
        third = transport.submit_task(queue, {"n": 0}, unique_key=key)
        assert third not in (tid, fresh)
        elsewhere = unique_queue("k")
        assert transport.submit_task(elsewhere, {}, unique_key=key) != third
        transport.purge(elsewhere)

    def test_a_purge_forgets_the_statuses_and_frees_the_unique_keys(self, transport, queue, probe):
        """``purge`` and ``purge_failed`` delete tasks: their statuses are forgotten
        (``status`` reads None, as DESIGN.md says of an id the store has forgotten), a
        waiter returns at once, and a unique key they held is free. Fails if a purge
        leaves the records (checked against AMQP, whose purges left them in the store of
        ``asynctask_state``: the purged task read queued, and a submit with its key
        returned the purged id and stored nothing)."""
        self.purge_story(transport, queue, probe)

    def test_a_purge_forgets_the_statuses_kept_in_another_store(
        self, transport, queue, probe, state_store_uri
    ):
        """The same story with the statuses in the store of ``asynctask_state``: the
        purge tells that store which tasks it deleted. Failed on localmem, filesys,
        pgsql and redis, whose purges cleared only their own records: the purged tasks
        read queued there, and a submit with the key returned the purged id."""
        transport.state_uri = state_store_uri
        try:
            self.purge_story(transport, queue, probe)
        finally:
            transport.state_uri = None

    @classmethod
    def purge_story(cls, transport: Transport, queue: str, probe: Any) -> None:
        """The purge story on ``transport`` (wherever it keeps its statuses); ``probe``
        counts what the queue stores (``probe.stored``)."""
        # Given waiting tasks (one holding a unique key, one delayed) and a blocked waiter
        transport.state().fallback_poll = FALLBACK_POLL
        key = "purged:" + unique_queue("k")
        keyed = transport.submit_task(queue, {"n": 1}, unique_key=key)
        plain = transport.submit_task(queue, {"n": 2})
        later = transport.submit_task(queue, {"n": 3}, delay=60)
        got: list[Any] = []

        def waiter() -> None:
            try:
                got.append(transport.wait(plain, timeout=30))
            except LookupError as exc:
                got.append(exc)
            got.append(time.monotonic())

        waiting = threading.Thread(target=waiter)
        waiting.start()
        time.sleep(0.5)  # the waiter is blocked by now
        assert not got, "wait returned before the purge"
        # When the queue is purged
        purged = time.monotonic()
        assert transport.purge(queue) == 3
        # Then the store knows none of them, and the waiter returned soon after
        assert transport.statuses([keyed, plain, later]) == [None, None, None]
        waiting.join(30)
        assert got and got[-1] - purged < WAIT_BOUND, "wait did not return after the purge"
        assert isinstance(got[0], LookupError) or got[0] is None, got
        # And the unique key is free: a new task is created and stored
        fresh = transport.submit_task(queue, {"n": 4}, unique_key=key)
        assert fresh != keyed and probe.stored(queue) == 1
        # When it and another fail, and the failed store is purged by id, then whole
        other = transport.submit_task(queue, {"n": 5})
        assert sorted(cls._fail(transport, queue, 2)) == sorted([fresh, other])
        assert [s.state if s else None for s in transport.statuses([fresh])] == ["failed"]
        assert transport.purge_failed(queue, [fresh]) == 1
        assert transport.status(fresh) is None
        assert [s.state if s else None for s in transport.statuses([other])] == ["failed"]
        assert transport.purge_failed(queue) == 1
        # Then their statuses are forgotten too, and the key is free again
        assert transport.statuses([fresh, other]) == [None, None]
        assert transport.submit_task(queue, {"n": 6}, unique_key=key) not in (keyed, fresh)
        transport.purge(queue)

    @staticmethod
    def _fail(transport: Transport, queue: str, count: int) -> list[str]:
        """Take the next ``count`` tasks through a consumer in this process and fail them."""
        failed = []
        with transport.consumer(queue) as consumer:
            for _ in range(count):
                delivery = consumer.reserve(timeout=10)
                assert delivery is not None, "no task to fail"
                assert consumer.start(delivery) == "run"
                consumer.fail(delivery, "RuntimeError: failed for the purge")
                consumer.record_outcome(delivery, "failed", "RuntimeError: failed for the purge")
                failed.append(delivery.id)
        return failed

    def test_a_unique_key_is_freed_when_its_task_expires_or_fails(self, transport, queue, probe):
        """The key is released when its task is final: expired (no worker came in time)
        or failed (in the failed store). Failed against pgsql, whose expired task kept
        its key until a consumer reached it: the new submit returned the expired id and
        stored nothing."""
        key = "once:" + unique_queue("k")
        # Given a task with a key that expires before any worker is free
        stale = transport.submit_task(queue, {"n": 1}, unique_key=key, expires=0.5)
        assert transport.submit_task(queue, {"n": 2}, unique_key=key) == stale
        time.sleep(1.0)
        expired = transport.status(stale)
        assert expired is not None and expired.state == "expired", expired
        # When the same key is submitted again
        fresh = transport.submit_task(queue, {"n": 3}, unique_key=key)
        # Then it is a new task, and the expired one is never delivered
        assert fresh != stale, "a submit with an expired task's key returned that task"
        assert transport.submit_task(queue, {"n": 4}, unique_key=key) == fresh
        with transport.consumer(queue) as consumer:
            delivery = _next_to_run(consumer, expired={stale})
            assert delivery is not None and delivery.id == fresh, delivery
            # When that one fails for good (to the failed store)
            consumer.fail(delivery, "RuntimeError: boom")
            consumer.record_outcome(delivery, "failed", error="RuntimeError: boom")
            assert _next_to_run(consumer, expired={stale}, timeout=0.3) is None
        failed = transport.status(fresh)
        assert failed is not None and failed.state == "failed", failed
        assert [f.id for f in transport.failed_tasks(queue)] == [fresh]
        # Then the key is free again
        again = transport.submit_task(queue, {"n": 5}, unique_key=key)
        assert again not in (stale, fresh), "a submit with a failed task's key returned it"
        assert probe.stored(queue) == 1
        transport.purge_failed(queue)

    def test_a_unique_key_is_held_while_its_task_runs_past_its_expires(
        self, transport, queue, probe
    ):
        """``expires`` bounds only the wait for a start: a task started in time keeps its
        unique key while it runs or backs off past it, until it is final. Failed against
        redis (and AMQP with statuses in redis), whose key lapsed with ``expires``: a
        second task was created while the first ran."""
        key = "held:" + unique_queue("k")
        # Given a task with a key and a 3 s expiry (a loaded machine takes a second to
        # open a consumer), started in time
        lapses = time.monotonic() + 3.0
        tid = transport.submit_task(queue, {"n": 1}, unique_key=key, expires=3.0)
        with transport.consumer(queue) as consumer:
            delivery = consumer.reserve(timeout=10)
            assert delivery is not None and delivery.id == tid
            assert consumer.start(delivery) == "run"
            # When it runs past its expiry
            time.sleep(max(0.0, lapses - time.monotonic()) + 0.5)
            # Then it is running and holds its key: a submit with it writes nothing
            running = transport.status(tid)
            assert running is not None and running.state == "running", running
            again = transport.submit_task(queue, {"n": 2}, unique_key=key)
            assert again == tid, "a second task was created while the key's holder ran"
            # When it fails and backs off, still past its expiry
            consumer.retry(delivery, 1.0, "RuntimeError: once more")
            consumer.record_outcome(delivery, "retrying", "RuntimeError: once more")
            consumer.flush_status_feed()
            retrying = transport.status(tid)
            assert retrying is not None and retrying.state == "retrying", retrying
            again = transport.submit_task(queue, {"n": 3}, unique_key=key)
            assert again == tid, "a second task was created while the key's holder backed off"
            # And its next attempt runs (it started in time), then succeeds
            delivery = consumer.reserve(timeout=10)
            assert delivery is not None and delivery.id == tid
            assert consumer.start(delivery) == "run"
            consumer.ack(delivery)
            consumer.record_outcome(delivery, "succeeded")
        assert transport.wait(tid, timeout=10).state == "succeeded"
        # Then the key is free: the next submit with it is a new task
        fresh = transport.submit_task(queue, {"n": 4}, unique_key=key)
        assert fresh != tid and probe.stored(queue) == 1
        transport.purge(queue)

    def test_submit_tasks_takes_expires_for_the_whole_batch(self, transport, queue, probe):
        """``submit_tasks(..., expires=...)`` gives every task of the batch its expiry:
        past it, each reads ``expired`` and never runs; a batch without it is untouched.
        Fails against a batch submit that drops the option (the tasks ran)."""
        # Given a batch that expires in 0.5 s and one that does not
        stale = transport.submit_tasks(queue, [{"n": 1}, {"n": 2}], expires=0.5)
        kept = transport.submit_tasks(queue, [{"n": 3}], expires=600)
        assert [s.state if s else None for s in transport.statuses(stale)] == ["queued"] * 2
        # When no worker is free until after it
        time.sleep(1.0)
        # Then both read expired, and only the other batch is delivered
        states = [s.state if s else None for s in transport.statuses(stale)]
        assert states == ["expired", "expired"], states
        with transport.consumer(queue) as consumer:
            delivery = _next_to_run(consumer, expired=set(stale))
            assert delivery is not None and delivery.id == kept[0], delivery
            consumer.ack(delivery)
            consumer.record_outcome(delivery, "succeeded")
            assert _next_to_run(consumer, expired=set(stale), timeout=0.3) is None
        assert probe.stored(queue) == 0 and transport.failed_tasks(queue) == []

    # -- priority -----------------------------------------------------------------------

    def test_priorities_come_out_highest_first_fifo_within(self, transport, queue):
        """Fails against a reserve that ignores priority (plain FIFO)."""
        # Given tasks of priorities 0, 5 and 9 submitted in mixed order
        order = [0, 9, 5, 0, 5, 9, 9, 0, 5]
        expected: dict[int, list[str]] = {0: [], 5: [], 9: []}
        for priority in order:
            expected[priority].append(
                transport.submit_task(queue, {"p": priority}, priority=priority)
            )
        expected[5] += transport.submit_tasks(queue, [{"p": 5}, {"p": 5}], priority=5)
        # (peek lists them in the order they will be taken)
        if transport.can_peek:
            peeked = [w.id for w in transport.peek(queue)]
            assert peeked == expected[9] + expected[5] + expected[0]
        # When a consumer takes them all
        taken: list[str] = []
        with transport.consumer(queue) as consumer:
            for _ in range(len(order) + 2):
                delivery = consumer.reserve(timeout=10)
                assert delivery is not None
                taken.append(delivery.id)
                consumer.ack(delivery)
        # Then the highest come first, each priority in submission order
        assert taken == expected[9] + expected[5] + expected[0]

    # -- forgetting ---------------------------------------------------------------------

    def test_final_statuses_are_forgotten_after_the_ttl(self, transport, queue):
        """Fails if a final status is kept past its TTL, or forgotten before it (checked
        against a localmem that never purged: still there after 10 s)."""
        # Given a short status TTL, and tasks that succeed and are cancelled
        transport.status_ttl = 2.0
        done = transport.submit_task(queue, {"n": 1})
        assert self._finish(transport, queue, result=[1]) == done
        cancelled = transport.submit_task(queue, {"n": 2})
        assert transport.cancel(cancelled) is True
        ended = time.monotonic()
        # Then they are kept for the TTL
        time.sleep(0.5)
        for task_id in (done, cancelled):
            kept = transport.status(task_id)
            assert kept is not None and kept.final, f"{task_id} forgotten before its TTL"
        # And forgotten by the backend soon after it
        gone = _wait_until(
            lambda: transport.statuses([done, cancelled]), lambda s: s == [None, None], 10
        )
        assert gone == [None, None], f"kept {time.monotonic() - ended:.1f} s; the TTL is 2 s"

    def test_a_failed_status_lives_as_long_as_its_failed_record(self, transport, queue):
        """TTL forgetting never drops a ``failed`` status while its task is in the
        failed store; a purge of that store forgets it. Fails against a localmem whose
        forgetting took failed statuses too (gone with the succeeded one)."""
        # Given a short status TTL, a task that failed for good, then one that succeeded
        transport.status_ttl = 1.0
        failed = transport.submit_task(queue, {"n": 1})
        assert self._fail(transport, queue, 1) == [failed]
        done = transport.submit_task(queue, {"n": 2})
        assert self._finish(transport, queue) == done
        # When the TTL has passed and the succeeded one is forgotten
        gone = _wait_until(lambda: transport.status(done), lambda s: s is None, 10)
        assert gone is None, "the succeeded status was never forgotten"
        # Then the failed one is still failed, as long as it is in the failed store
        kept = transport.status(failed)
        assert kept is not None and kept.state == "failed", kept
        assert [f.id for f in transport.failed_tasks(queue)] == [failed]
        # And a purge of the failed store forgets it
        assert transport.purge_failed(queue) == 1
        assert transport.status(failed) is None

    # -- switches and other stores ------------------------------------------------------

    def test_a_queue_whose_workers_keep_no_status_says_so(self, transport, queue):
        """``track_status = False``: the tasks run, and ``status`` names the setting."""
        tid = transport.submit_task(queue, {"result": 1})
        run_loop(StatusWorker(), transport, queue, LoopOptions(max_tasks=1, track_status=False))
        assert transport.queue_stats(queue).ready == 0
        with pytest.raises(StatusNotTracked, match=f"queue '{queue}'.*track_status"):
            transport.status(tid)
        with pytest.raises(StatusNotTracked, match="track_status"):
            transport.wait(tid, timeout=1)
        # And once its workers track again (a run loop says so at its start), its new
        # tasks have statuses again
        run_loop(StatusWorker(), transport, queue, LoopOptions(wait=0.1, stop_when_idle=True))
        again = transport.submit_task(queue, {"result": 2})
        run_loop(StatusWorker(), transport, queue, LoopOptions(max_tasks=1))
        status = transport.status(again)
        assert status is not None and (status.state, status.result) == ("succeeded", 2)

    def test_a_submit_to_an_untracked_queue_writes_no_status(self, transport, queue, probe):
        """A queue whose workers run with ``track_status = False`` gets no status record
        at submit (``asynctask.untracked``), one by one or in a batch, delayed or not;
        options kept in the record still write it. Fails if the submit writes the
        record anyway (checked with Transport._untracked_queue always False: every
        transport failed at ``store.statuses(ids) == [None] * 5``)."""
        # Given a queue recorded as untracked in the store (as its workers do at start)
        store = transport.state()
        store.set_tracking(queue, False)
        try:
            # When tasks are submitted to it without options
            one = transport.submit_task(queue, {"n": 1})
            batch = transport.submit_tasks(queue, [{"n": 2}, {"n": 3}])
            later = transport.submit_task(queue, {"n": 4}, delay=60)
            urgent = transport.submit_task(queue, {"n": 5}, priority=5)
            # Then they are stored, and the store holds no status for any of them
            assert probe.stored(queue) == 5
            ids = [one, *batch, later, urgent]
            assert store.statuses(ids) == [None] * 5
            # status/wait say why there is none (DESIGN.md section 6), not "never
            # submitted": the id carries the mark of a task submitted unrecorded
            for unrecorded in ids:
                with pytest.raises(StatusNotTracked, match="track_status"):
                    transport.status(unrecorded)
            with pytest.raises(StatusNotTracked, match="track_status"):
                transport.wait(one, timeout=1)
            # And nothing to cancel: its workers would never read a cancel
            assert transport.cancel(one) is False
            # But a submit whose options live in the record still writes it (or refuses
            # it, naming the setting, where the store keeps none for such a queue)
            try:
                kept = transport.submit_task(queue, {"n": 6}, expires=600)
            except StatusNotTracked:
                pass
            else:
                assert store.statuses([kept])[0] is not None
        finally:
            store.set_tracking(queue, True)
            transport.purge(queue)

    def test_a_worker_that_tracks_runs_a_task_submitted_without_a_record(
        self, transport, queue, probe
    ):
        """Tasks submitted while the queue was untracked have no record; a worker that
        tracks (the queue flipped meanwhile) runs them, retries and fails them as any
        other: its start and settle writes cope with the missing record. Fails if a
        start or settle write needs the record (checked against a localmem whose
        start() raised on a missing record: the run loop logged the error and the
        run loop raised its KeyError and the test failed)."""
        # Given tasks submitted to an untracked queue: one succeeds, one always fails
        store = transport.state()
        store.set_tracking(queue, False)
        try:
            ok = transport.submit_task(queue, {"result": 7})
            bad = transport.submit_task(queue, {"fail": True})
            assert store.statuses([ok, bad]) == [None, None]
        finally:
            # When the queue's workers track again, and one runs (one retry, 2 s back-off)
            store.set_tracking(queue, True)
        run_loop(StatusWorker(), transport, queue, LoopOptions(max_tasks=3, wait=0.1))
        # Then both ran to their end: nothing waits or is held, the bad one is failed
        stats = transport.queue_stats(queue)
        # (a count the transport does not give is None: nothing to check there)
        assert [c or 0 for c in (stats.ready, stats.retrying, stats.in_flight)] == [0] * 3, stats
        assert [f.id for f in transport.failed_tasks(queue)] == [bad]
        # And their statuses, where the worker began to follow them, are the outcomes
        # (read from the store: where none was made, status() says the task is
        # untracked, the mark of its id)
        done, failed = store.statuses([ok, bad])
        assert done is None or (done.state, done.result) == ("succeeded", 7), done
        assert failed is None or (failed.state, failed.attempts) == ("failed", 2), failed
        # (and status() says why where there is none: their ids carry the mark)
        if done is None:
            with pytest.raises(StatusNotTracked, match="track_status"):
                transport.status(ok)
        transport.purge_failed(queue)

    def test_asynctask_state_keeps_the_statuses_in_another_store(
        self, transport, queue, probe, state_store_uri
    ):
        """With ``asynctask_state`` set, every status lives in that store and the
        transport keeps none of its own; unique keys and cancels go through it."""
        # Given the transport's statuses kept in another store
        transport.state_uri = state_store_uri
        try:
            key = "once:" + unique_queue("k")
            tid = transport.submit_task(queue, {"result": "there"}, unique_key=key)
            assert transport.submit_task(queue, {}, unique_key=key) == tid
            doomed = transport.submit_task(queue, {"n": 2})
            assert probe.stored(queue) == 2
            # Then the other store knows them
            store = transport.state()
            assert [s.state if s else None for s in store.statuses([tid, doomed])] == [
                "queued",
                "queued",
            ]
            own = transport._state_store()
            if own is not None and own is not store:
                assert own.statuses([tid, doomed]) == [None, None]
            # When one is cancelled and a worker runs the queue
            assert transport.cancel(doomed) is True
            run_loop(StatusWorker(), transport, queue, LoopOptions(max_tasks=2, wait=0.1))
            # Then the cancelled one never ran and the other succeeded, in that store
            done = transport.wait(tid, timeout=10)
            assert (done.state, done.result, done.attempts) == ("succeeded", "there", 1)
            status = transport.status(doomed)
            assert status is not None and status.state == "cancelled"
            assert probe.stored(queue) == 0 and transport.failed_tasks(queue) == []
            assert transport.submit_task(queue, {}, unique_key=key) != tid
            transport.purge(queue)
        finally:
            transport.state_uri = None


def _next_to_run(consumer: Any, expired: set[str], timeout: float = 10) -> Any:
    """The next delivery that ``start`` lets run, as the run loop takes it; a task of
    ``expired`` may be delivered, but its start must say ``expired`` (then it is settled
    and never runs). None when nothing else comes within ``timeout``."""
    while (delivery := consumer.reserve(timeout=timeout)) is not None:
        verdict = consumer.start(delivery)
        if verdict == "run":
            assert delivery.id not in expired, f"expired task {delivery.id} was started"
            return delivery
        assert (verdict, delivery.id in expired) == ("expired", True), (verdict, delivery)
    return None


def _json(value: Any) -> str:
    import json

    return json.dumps(value, separators=(",", ":"))
