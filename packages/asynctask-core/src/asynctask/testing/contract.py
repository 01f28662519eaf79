"""The transport contract: every behaviour of DESIGN.md section 2, as one test class.

A transport's tests subclass ``TransportContract`` and supply two fixtures, nothing else::

    class TestRedisTransport(TransportContract):
        @pytest.fixture
        def transport_uri(self) -> str: ...        # a URI to a reachable backend
        @pytest.fixture
        def probe(self, transport_uri) -> Probe: ...  # reads and writes the backend directly

The probe checks state through the backend itself, not only through the API under test,
and writes messages as a foreign producer (or a corrupting one) would. A test may be
overridden only to mark it ``xfail(strict=True, reason=...)``.

Tests that need another process (a killed consumer, several consumers at once) use real
processes, started with ``spawn``; a transport whose ``features.multiprocess`` is false
(``localmem``) runs them with threads instead, since its store lives in one process.
"""

from __future__ import annotations

import multiprocessing
import os
import queue as queue_module
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol
from urllib.parse import urlsplit

import pytest

from asynctask.errors import InvalidTaskError, TransportClosed
from asynctask.plugins import load_plugins
from asynctask.testing.services import unique_queue
from asynctask.transport import COUNT_NAMES, Transport

BAD_QUEUE_NAMES = ["f", "Foo", "1foo", "_foo", "foo_", "foo__bar", "some-queue", "", "a b"]
BAD_PAYLOADS: list[Any] = [
    [1, 2],
    "text",
    42,
    {"key": {1, 2}},
    {1: "int key"},
    {"nan": float("nan")},
    {"obj": object()},
]


class Probe(Protocol):
    """Direct access to a backend, past the API under test."""

    def stored(self, queue: str) -> int:
        """Tasks stored for ``queue`` in any state but failed (ready, delayed, in flight)."""

    def inject(self, queue: str, text: str) -> None:
        """Write ``text`` into ``queue`` as a foreign producer would, in the documented
        format for a plain client (``RPUSH``, ``INSERT``, a file, a publish)."""


def open_transport(uri: str) -> Transport:
    """A new transport object for ``uri`` (not the cached one of ``get_transport``)."""
    return load_plugins().transport_class(uri)(uri)


# -- code that runs in child processes (module level, so ``spawn`` can import it) -------


def _reserve_one(transport: Transport, queue: str, report: Any) -> None:
    """Reserve a task, report its payload and return still holding it."""
    delivery = transport.consumer(queue).reserve(timeout=20)
    report.put(None if delivery is None else delivery.payload)


def _drain_all(transport: Transport, queue: str, report: Any) -> None:
    """Take and acknowledge tasks until none comes for 1.5 s; report their numbers."""
    taken: list[int] = []
    with transport.consumer(queue) as consumer:
        while (delivery := consumer.reserve(timeout=1.5)) is not None:
            taken.append(delivery.payload["n"])
            consumer.ack(delivery)
    report.put(taken)


def _submit_one(transport: Transport, queue: str, payload: dict[str, Any]) -> None:
    transport.submit_task(queue, payload)


def _in_child(uri: str, job: Callable[..., None], hang: bool, *args: Any) -> None:
    """Run ``job`` on a transport of this child process; with ``hang``, wait to be killed."""
    transport = open_transport(uri)
    job(transport, *args)
    if hang:
        time.sleep(120)  # the parent kills us here, mid-task
    transport.close()


def hold_task_in_child(uri: str, queue: str, report: Any) -> None:
    """A child-process target: reserve a task, report its payload, wait to be killed."""
    _in_child(uri, _reserve_one, True, queue, report)


class TransportContract:
    """The shared suite; see the module docstring. Fixtures ``transport_uri`` and ``probe``
    come from the subclass."""

    # -- fixtures ---------------------------------------------------------------------

    @pytest.fixture
    def transport(self, transport_uri: str) -> Iterator[Transport]:
        """A fresh transport object, closed after the test."""
        transport = open_transport(transport_uri)
        yield transport
        transport.close()

    @pytest.fixture
    def queue(self) -> str:
        """A queue name no other test uses."""
        return unique_queue()

    @staticmethod
    def _other(transport: Transport) -> Transport:
        """Another object on the same store (the same one where the store is in-process)."""
        if transport.features.multiprocess:
            return open_transport(transport.uri)
        return transport

    @staticmethod
    def _run_apart(
        transport: Transport, job: Callable[..., None], *args: Any, hang: bool = False
    ) -> Any:
        """Run ``job(transport, *args)`` in a child process with its own transport object.

        With ``hang`` the child then waits to be killed. For an in-process store the job
        runs in a thread on ``transport`` and the thread's end is the "death". Returns a
        handle with ``join``/``pid``/``is_alive``.
        """
        if transport.features.multiprocess:
            ctx = multiprocessing.get_context("spawn")
            process = ctx.Process(
                target=_in_child, args=(transport.uri, job, hang, *args), daemon=True
            )
            process.start()
            return process
        thread = threading.Thread(target=job, args=(transport, *args), daemon=True)
        thread.start()
        return thread

    @staticmethod
    def _report_queue(transport: Transport) -> Any:
        if transport.features.multiprocess:
            return multiprocessing.get_context("spawn").Queue()
        return queue_module.Queue()

    # -- submitting and taking --------------------------------------------------------

    def test_submit_then_get_returns_the_payload_once(self, transport, queue, probe):
        # Given a task submitted to an empty queue
        task_id = transport.submit_task(queue, {"foo": "bar", "baz": 123})
        # Then it has an id and the backend holds one task
        assert isinstance(task_id, str) and task_id
        assert probe.stored(queue) == 1
        # When it is taken, it comes back as submitted, and only once
        assert transport.get_task(queue) == {"foo": "bar", "baz": 123}
        assert transport.get_task(queue) is None
        assert probe.stored(queue) == 0

    def test_none_payload_is_an_empty_object(self, transport, queue):
        transport.submit_task(queue, None)
        assert transport.get_task(queue) == {}

    def test_payload_round_trip_keeps_unicode_nesting_and_size(self, transport, queue):
        payload = {
            "text": "héllo ✓ 日本",
            "nested": {"a": [1, 2.5, None, True, {"b": []}]},
            "big": "x" * 1_000_000,
        }
        transport.submit_task(queue, payload)
        assert transport.get_task(queue) == payload

    def test_a_second_process_sees_what_the_first_submitted(self, transport, queue):
        handle = self._run_apart(transport, _submit_one, queue, {"from": "child"})
        handle.join(30)
        assert transport.get_task(queue) == {"from": "child"}

    def test_ready_tasks_come_out_in_submission_order(self, transport, queue):
        for n in range(10):
            transport.submit_task(queue, {"n": n})
        transport.submit_tasks(queue, [{"n": n} for n in range(10, 30)])
        taken = [transport.get_task(queue) for _ in range(30)]
        assert [t["n"] for t in taken if t] == list(range(30))

    def test_batch_submit_returns_one_id_per_task(self, transport, queue, probe):
        ids = transport.submit_tasks(queue, [{"n": n} for n in range(50)])
        assert len(ids) == len(set(ids)) == 50
        assert probe.stored(queue) == 50
        assert transport.submit_tasks(queue, []) == []

    def test_poll_queue_counts_ready_tasks_and_creates_nothing(self, transport, queue):
        assert transport.poll_queue(queue) == 0
        assert transport.get_task(queue) is None
        transport.queue_stats(queue)
        assert queue not in [q.name for q in transport.queues()]
        transport.submit_tasks(queue, [{}, {}, {}])
        assert transport.poll_queue(queue) == 3

    def test_queues_lists_counts_the_transport_declares(self, transport, queue):
        transport.submit_tasks(queue, [{}, {}])
        stats = {q.name: q for q in transport.queues()}
        assert stats[queue].ready == 2
        for name in COUNT_NAMES:
            value = getattr(stats[queue], name)
            if name in transport.features.counts:
                assert isinstance(value, int), name
            else:
                assert value is None, name

    def test_purge_removes_ready_and_delayed_tasks(self, transport, queue, probe):
        transport.submit_tasks(queue, [{}, {}, {}])
        transport.submit_task(queue, {}, delay=60)
        assert transport.purge(queue) == 4
        assert transport.poll_queue(queue) == 0
        assert probe.stored(queue) == 0

    def test_transport_is_safe_to_share_between_threads(self, transport, queue, probe):
        def submit() -> None:
            for n in range(25):
                transport.submit_task(queue, {"n": n})

        threads = [threading.Thread(target=submit) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert probe.stored(queue) == 100

    # -- bad input changes nothing -------------------------------------------------------

    @pytest.mark.parametrize("name", BAD_QUEUE_NAMES)
    def test_bad_queue_name_is_refused_on_every_call(self, transport, name):
        calls: list[Callable[[], object]] = [
            lambda: transport.submit_task(name, {}),
            lambda: transport.submit_tasks(name, [{}]),
            lambda: transport.get_task(name),
            lambda: transport.poll_queue(name),
            lambda: transport.queue_stats(name),
            lambda: transport.purge(name),
            lambda: transport.failed_tasks(name),
            lambda: transport.requeue_failed(name),
            lambda: transport.purge_failed(name),
            lambda: transport.consumer(name),
        ]
        for call in calls:
            with pytest.raises(ValueError, match="not a valid queue name") as info:
                call()
            assert repr(name) in str(info.value)
            assert "lower-case letters" in str(info.value)

    @pytest.mark.parametrize("payload", BAD_PAYLOADS, ids=lambda p: type(p).__name__)
    def test_bad_payload_is_refused_and_nothing_is_written(self, transport, queue, probe, payload):
        with pytest.raises(InvalidTaskError):
            transport.submit_task(queue, payload)
        with pytest.raises(InvalidTaskError, match="#1"):
            transport.submit_tasks(queue, [{"ok": 1}, payload])
        assert probe.stored(queue) == 0

    def test_bad_delay_is_refused(self, transport, queue, probe):
        for delay in (-1, "5", None, float("nan")):
            with pytest.raises(InvalidTaskError, match="delay"):
                transport.submit_task(queue, {}, delay=delay)
        assert probe.stored(queue) == 0

    def test_closed_transport_refuses_calls(self, transport_uri, queue):
        transport = open_transport(transport_uri)
        with transport:
            transport.submit_task(queue, {})
        with pytest.raises(TransportClosed):
            transport.submit_task(queue, {})
        with open_transport(transport_uri) as again:
            assert again.purge(queue) in (0, 1)

    def test_repr_carries_no_password(self, transport):
        assert repr(transport) == f"{type(transport).__name__}({transport.safe_uri!r})"
        parts = urlsplit(transport.uri.split("?")[0])
        # guest:guest@ would show the password as the user name, which is not a leak
        if parts.password and parts.password != parts.username:
            assert parts.password not in repr(transport)

    # -- foreign and corrupt messages --------------------------------------------------

    def test_a_plain_json_object_written_by_another_program_is_a_task(
        self, transport, queue, probe
    ):
        probe.inject(queue, '{"foo": 1, "bar": [true]}')
        assert transport.get_task(queue) == {"foo": 1, "bar": [True]}

    def test_corrupt_messages_go_to_the_failed_store_and_the_queue_goes_on(
        self, transport, queue, probe
    ):
        # Given garbage and JSON that is not an object ahead of a good task
        probe.inject(queue, "{not json")
        probe.inject(queue, "[1, 2, 3]")
        transport.submit_task(queue, {"good": True})
        # When a consumer reserves, it gets the good task
        with transport.consumer(queue) as consumer:
            delivery = consumer.reserve(timeout=5)
            assert delivery is not None and delivery.payload == {"good": True}
            consumer.ack(delivery)
        # And the garbage waits in the failed store, with its text and an error
        failed = transport.failed_tasks(queue)
        assert sorted(f.raw or "" for f in failed) == ["[1, 2, 3]", "{not json"]
        assert all(f.payload is None and f.error for f in failed)
        assert probe.stored(queue) == 0

    def test_get_task_skips_corrupt_messages_too(self, transport, queue, probe):
        probe.inject(queue, "\x00garbage")
        transport.submit_task(queue, {"n": 1})
        assert transport.get_task(queue) == {"n": 1}
        assert len(transport.failed_tasks(queue)) == 1

    # -- delays ----------------------------------------------------------------------

    def test_delayed_task_stays_invisible_until_due(self, transport, queue, probe):
        transport.submit_task(queue, {"late": True}, delay=1.5)
        assert probe.stored(queue) == 1
        assert transport.poll_queue(queue) == 0
        assert transport.get_task(queue) is None
        if "delayed" in transport.features.counts:
            assert transport.queue_stats(queue).delayed == 1
        start = time.monotonic()
        with transport.consumer(queue) as consumer:
            delivery = consumer.reserve(timeout=6)
            assert delivery is not None and delivery.payload == {"late": True}
            consumer.ack(delivery)
        assert time.monotonic() - start >= 1.0

    # -- reserve and settle ------------------------------------------------------------

    def test_reserved_task_is_invisible_until_acknowledged(self, transport, queue, probe):
        transport.submit_task(queue, {"n": 1})
        other = self._other(transport)
        with transport.consumer(queue) as first:
            delivery = first.reserve(timeout=5)
            assert delivery is not None and delivery.attempt == 1
            # While reserved, it is stored but nobody else can take it
            assert probe.stored(queue) == 1
            assert transport.poll_queue(queue) == 0
            if "in_flight" in transport.features.counts:
                assert transport.queue_stats(queue).in_flight == 1
            assert transport.get_task(queue) is None
            with other.consumer(queue) as second:
                assert second.reserve(timeout=0.3) is None
            # Acknowledged, it is gone for good
            first.ack(delivery)
        assert probe.stored(queue) == 0
        if other is not transport:
            other.close()

    def test_reserve_waits_for_its_timeout_when_empty(self, transport, queue):
        with transport.consumer(queue) as consumer:
            start = time.monotonic()
            assert consumer.reserve(timeout=0.5) is None
            elapsed = time.monotonic() - start
        assert 0.4 <= elapsed < 3.0

    def test_idle_consumer_wakes_within_milliseconds_of_a_submit(self, transport, queue):
        # Given a consumer blocked in reserve on an empty queue
        woke: queue_module.Queue[float] = queue_module.Queue()

        def wait() -> None:
            with transport.consumer(queue) as consumer:
                delivery = consumer.reserve(timeout=10)
                woke.put(time.monotonic())
                if delivery is not None:
                    consumer.ack(delivery)

        thread = threading.Thread(target=wait)
        thread.start()
        time.sleep(0.5)
        # When another producer submits
        producer = self._other(transport)
        sent = time.monotonic()
        producer.submit_task(queue, {"wake": 1})
        # Then the consumer has it well before any poll interval would pass
        latency = woke.get(timeout=10) - sent
        thread.join()
        if producer is not transport:
            producer.close()
        assert latency < 0.25, f"woke {latency * 1000:.0f} ms after the submit"

    def test_retry_hides_the_task_for_its_delay_and_counts_the_attempt(self, transport, queue):
        transport.submit_task(queue, {"n": 1})
        with transport.consumer(queue) as consumer:
            first = consumer.reserve(timeout=5)
            assert first is not None
            consumer.retry(first, delay=1.0, error="ValueError: boom")
            assert transport.poll_queue(queue) == 0
            if "retrying" in transport.features.counts:
                assert transport.queue_stats(queue).retrying == 1
            assert consumer.reserve(timeout=0.2) is None
            second = consumer.reserve(timeout=6)
            assert second is not None and second.payload == {"n": 1}
            assert second.attempt == 2 and second.id == first.id
            consumer.ack(second)
        assert transport.failed_tasks(queue) == []

    def test_failed_task_is_kept_inspected_requeued_and_purged(self, transport, queue, probe):
        # Given a task that a worker gave up on
        transport.submit_task(queue, {"n": 1})
        with transport.consumer(queue) as consumer:
            delivery = consumer.reserve(timeout=5)
            assert delivery is not None
            consumer.fail(delivery, "RuntimeError: no luck")
        # Then it is in the failed store with its error and attempts, not in the queue
        assert probe.stored(queue) == 0
        [failed] = transport.failed_tasks(queue)
        assert failed.payload == {"n": 1} and failed.id == delivery.id
        assert "no luck" in failed.error and failed.attempts == 1
        assert failed.failed_at > 0
        if "failed" in transport.features.counts:
            assert transport.queue_stats(queue).failed == 1
        assert queue in [q.name for q in transport.queues()]
        # When it is requeued, it is ready again with its attempts reset
        assert transport.requeue_failed(queue) == 1
        assert transport.failed_tasks(queue) == []
        with transport.consumer(queue) as consumer:
            again = consumer.reserve(timeout=5)
            assert again is not None and again.payload == {"n": 1} and again.attempt == 1
            consumer.fail(again, "RuntimeError: still no luck")
        # And purged, it is gone
        assert transport.purge_failed(queue, ids=[again.id]) == 1
        assert transport.failed_tasks(queue) == []

    def test_requeue_failed_by_id_leaves_the_others(self, transport, queue):
        transport.submit_tasks(queue, [{"n": 1}, {"n": 2}])
        with transport.consumer(queue) as consumer:
            for _ in range(2):
                delivery = consumer.reserve(timeout=5)
                assert delivery is not None
                consumer.fail(delivery, "boom")
        first, second = transport.failed_tasks(queue)
        assert transport.requeue_failed(queue, ids=[second.id]) == 1
        assert [f.id for f in transport.failed_tasks(queue)] == [first.id]
        assert transport.get_task(queue) == second.payload
        assert transport.purge_failed(queue) == 1

    def test_release_hands_the_task_back_without_an_attempt(self, transport, queue):
        transport.submit_task(queue, {"n": 1})
        with transport.consumer(queue) as consumer:
            delivery = consumer.reserve(timeout=5)
            assert delivery is not None
            consumer.release(delivery)
            assert transport.poll_queue(queue) == 1
            again = consumer.reserve(timeout=5)
            assert again is not None and again.attempt == 1
            consumer.ack(again)

    def test_closing_a_consumer_hands_back_what_it_holds(self, transport, queue):
        transport.submit_tasks(queue, [{"n": n} for n in range(3)])
        consumer = transport.consumer(queue, prefetch=3)
        delivery = consumer.reserve(timeout=5)
        assert delivery is not None and delivery.payload == {"n": 0}
        consumer.close()
        taken = [transport.get_task(queue) for _ in range(3)]
        assert sorted(t["n"] for t in taken if t) == [0, 1, 2]

    def test_prefetching_consumer_keeps_order(self, transport, queue):
        transport.submit_tasks(queue, [{"n": n} for n in range(10)])
        seen = []
        with transport.consumer(queue, prefetch=4) as consumer:
            while (delivery := consumer.reserve(timeout=0.5)) is not None:
                seen.append(delivery.payload["n"])
                consumer.ack(delivery)
        assert seen == list(range(10))

    # -- dead consumers and many consumers ----------------------------------------------

    def test_task_of_a_killed_consumer_comes_back_counted_as_an_attempt(
        self, transport, queue, probe
    ):
        # Given a consumer in another process that reserved the task
        transport.submit_task(queue, {"n": 1})
        report = self._report_queue(transport)
        handle = self._run_apart(transport, _reserve_one, queue, report, hang=True)
        assert report.get(timeout=30) == {"n": 1}
        # When it is killed mid-task (a thread simply ends, for in-process stores)
        killed = time.monotonic()
        if transport.features.multiprocess:
            os.kill(handle.pid, signal.SIGKILL)
        handle.join(10 if transport.features.multiprocess else None)
        assert probe.stored(queue) == 1
        # Then the task is delivered again within the transport's recovery time
        bound = transport.features.recovery_seconds
        with transport.consumer(queue) as consumer:
            delivery = consumer.reserve(timeout=bound + 10)
            waited = time.monotonic() - killed
            assert delivery is not None and delivery.payload == {"n": 1}
            assert delivery.attempt == 2
            consumer.ack(delivery)
        assert waited <= bound + 1.5, f"came back after {waited:.1f} s, bound {bound} s"

    def test_a_slow_task_of_a_live_consumer_is_not_delivered_twice(self, transport, queue):
        transport.submit_task(queue, {"n": 1})
        other = self._other(transport)
        with transport.consumer(queue) as slow:
            delivery = slow.reserve(timeout=5)
            assert delivery is not None
            # Well past the recovery bound, nobody else gets the task
            deadline = time.monotonic() + transport.features.recovery_seconds + 1.5
            with other.consumer(queue) as rival:
                while (left := deadline - time.monotonic()) > 0:
                    assert rival.reserve(timeout=left) is None
            slow.ack(delivery)
        assert transport.poll_queue(queue) == 0
        if other is not transport:
            other.close()

    def test_several_consumers_take_every_task_exactly_once(self, transport, queue, probe):
        transport.submit_tasks(queue, [{"n": n} for n in range(200)])
        report = self._report_queue(transport)
        handles = [self._run_apart(transport, _drain_all, queue, report) for _ in range(4)]
        taken: list[int] = []
        for _ in handles:
            taken.extend(report.get(timeout=60))
        for handle in handles:
            handle.join(30)
        assert sorted(taken) == list(range(200))
        assert probe.stored(queue) == 0

    # -- claims (the scheduler's exactly-once) ------------------------------------------

    def test_claim_has_one_winner_until_it_expires(self, transport):
        key = "contract:" + unique_queue()
        other = self._other(transport)
        assert transport.claim(key, ttl=1.0) is True
        assert transport.claim(key, ttl=1.0) is False
        assert other.claim(key, ttl=1.0) is False
        time.sleep(1.6)
        assert other.claim(key, ttl=1.0) is True
        if other is not transport:
            other.close()
