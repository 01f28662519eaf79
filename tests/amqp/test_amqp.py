"""What only the amqp transport does: foreign producers, URIs, errors without passwords,
outages (dropped connections, a broker restart, a silent consumer), attempts counted
across processes, the delay ladders, the registry and claims."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import amqp
import kombu
import pytest

from asynctask.errors import InvalidTaskError, InvalidURIError, TransportError, TransportUnavailable
from asynctask.testing import unique_queue
from asynctask.testing.contract import hold_task_in_child, open_transport
from asynctask.transport import Transport
from asynctask_amqp.topology import DUE, MAX_DELAY, REGISTRY, rung_for
from asynctask_amqp.transport import AmqpTransport
from chaos.private_rabbitmq import PrivateRabbitMQ
from support import free_port
from tests.amqp.conftest import PASSWORD, USER, VHOST, on_shared_ladder, rabbitmqctl

# -- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture
def uri(amqp_uri: str) -> str:
    return f"{amqp_uri}?heartbeat=1&retry_timeout=30"


@pytest.fixture
def transport(uri: str) -> Iterator[Transport]:
    transport = open_transport(uri)
    yield transport
    transport.close()


@pytest.fixture
def queue() -> str:
    return unique_queue("amqp")


@pytest.fixture
def channel(amqp_uri: str) -> Iterator[Any]:
    """A plain py-amqp channel on the test vhost, as another program would have."""
    with kombu.Connection(amqp_uri) as connection:
        yield connection.default_channel


@pytest.fixture
def connection(amqp_uri: str) -> Iterator[kombu.Connection]:
    """A plain kombu connection to the test vhost."""
    with kombu.Connection(amqp_uri) as connection:
        connection.ensure_connection(max_retries=0, reraise_as_library_errors=False)
        yield connection


class Worker:
    """A worker loop in a thread: reserve, 'process' (note the payload), ack."""

    def __init__(self, transport: Transport, queue: str, pause: float = 0.0) -> None:
        self.transport, self.queue, self.pause = transport, queue, pause
        self.seen: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with self.transport.consumer(self.queue) as consumer:
            while not self.stop.is_set():
                delivery = consumer.reserve(timeout=0.5)
                if delivery is not None:
                    time.sleep(self.pause)
                    self.seen.append(delivery.payload["n"])
                    consumer.ack(delivery)

    def wait_for(self, expected: set[int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not expected <= set(self.seen) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.stop.set()
        self.thread.join(10)
        assert set(self.seen) == expected, sorted(expected - set(self.seen))


def taken_one(transport: Transport, queue: str, timeout: float = 5) -> Any:
    with transport.consumer(queue) as consumer:
        delivery = consumer.reserve(timeout=timeout)
        assert delivery is not None
        consumer.ack(delivery)
        return delivery


# -- storage: another program's tasks -----------------------------------------------------


def test_a_task_published_by_plain_kombu_is_processed(transport, queue, amqp_uri):
    # Given a producer that knows nothing of asynctask: kombu's SimpleQueue (the format
    # of the original transport) and a bare publish to the default exchange
    transport.submit_task(queue, {"n": 0})  # the queue exists, as a worker would declare
    with kombu.Connection(amqp_uri) as connection:
        connection.SimpleQueue(queue).put({"n": 1})
        connection.default_channel.basic_publish(
            amqp.Message(b'{"n": 2}', content_type="application/json"), "", queue
        )
    # When a consumer takes them, each is a first attempt with an id of its own
    # (two channels published them: their relative order is the broker's choice)
    deliveries = [taken_one(transport, queue) for _ in range(3)]
    assert sorted(d.payload["n"] for d in deliveries) == [0, 1, 2]
    assert [d.attempt for d in deliveries] == [1, 1, 1]
    assert len({d.id for d in deliveries}) == 3


def test_submitted_messages_are_documented_json_with_headers(transport, queue, channel):
    # When asynctask submits a task, another client reads plain JSON and our headers
    task_id = transport.submit_task(queue, {"héllo": "wörld"})
    message = channel.basic_get(queue, no_ack=True)
    # (py-amqp decodes the body since content_encoding says utf-8)
    assert message.body == '{"héllo":"wörld"}'
    assert message.properties["content_encoding"] == "utf-8"
    assert message.properties["content_type"] == "application/json"
    assert message.properties["delivery_mode"] == 2
    assert message.properties["message_id"] == task_id
    assert message.headers["x-asynctask-attempts"] == 0
    assert message.headers["x-asynctask-submitted-at"] > 0


# -- URIs and errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "where"),
    [
        ("amqp://", ("localhost", 5672, "guest", "/")),
        ("amqp://h", ("h", 5672, "guest", "/")),
        ("amqp://u:p@h:1234/", ("h", 1234, "u", "/")),
        ("amqp://u:p@h//", ("h", 5672, "u", "/")),
        ("amqp://u:p@h/%2F", ("h", 5672, "u", "/")),
        ("amqp://u:p%40ss@h/my%20vhost", ("h", 5672, "u", "my vhost")),
        ("amqps://u:p@h/v", ("h", 5671, "u", "v")),
    ],
)
def test_uri_forms(uri, where):
    transport = AmqpTransport(uri)  # connects lazily: no broker needed
    params = transport.params
    assert (params.host, params.port, params.user, params.vhost) == where
    assert (params.ssl is not None) == uri.startswith("amqps")
    transport.close()


def test_uri_options_reach_kombu():
    transport = AmqpTransport(
        "amqps://u:p@h/v?heartbeat=7&connect_timeout=2&read_timeout=9&frame_max=65536"
        "&ssl_ca_certs=/etc/ca.pem"
    )
    kwargs = transport.params.kombu_kwargs()
    assert kwargs["heartbeat"] == 7 and kwargs["connect_timeout"] == 2.0
    assert kwargs["transport_options"] == {"read_timeout": 9.0, "frame_max": 65536}
    assert kwargs["ssl"]["context"] == {"cafile": "/etc/ca.pem", "check_hostname": True}
    assert transport.features.recovery_seconds == 21.0
    transport.close()


def test_a_uri_may_list_several_brokers():
    # Given a URI naming a cluster's three nodes (IPv6 too), TLS and quorum queues
    transport = AmqpTransport("amqps://u:pw@h1:5671,h2:5681,[::1]/v?queue_type=quorum")
    params = transport.params
    # Then each node is tried by its own name and port, all shown, none with the password
    assert params.hosts == (("h1", 5671), ("h2", 5681), ("::1", 5671))
    assert params.describe() == "h1:5671,h2:5681,[::1]:5671 (vhost 'v', user 'u')"
    assert [params.kombu_kwargs(i)["hostname"] for i in range(3)] == ["h1", "h2", "::1"]
    assert params.kombu_kwargs(1)["ssl"]["server_hostname"] == "h2"
    assert params.queue_type == "quorum" and params.delivery_limit == 20
    transport.close()


def test_a_node_that_is_down_is_passed_over_for_the_next_one(amqp_uri, queue):
    # Given a URI whose first broker is a port nobody listens on, the second the broker
    dead = free_port()
    uri = amqp_uri.replace("@127.0.0.1:5672/", f"@127.0.0.1:{dead},127.0.0.1:5672/")
    with open_transport(uri + "?retry_timeout=5") as transport:
        # When tasks are submitted and taken, they go through the second
        started = time.monotonic()
        transport.submit_task(queue, {"n": 1})
        assert transport.get_task(queue) == {"n": 1}
        with transport.consumer(queue) as consumer:
            transport.submit_task(queue, {"n": 2})
            delivery = consumer.reserve(timeout=10)
            assert delivery is not None and delivery.payload == {"n": 2}
            consumer.ack(delivery)
        # at once, not after an outage's back-off
        assert time.monotonic() - started < 5


def test_an_unknown_queue_type_is_refused():
    with pytest.raises(InvalidURIError, match="queue_type"):
        AmqpTransport("amqp://h/v?queue_type=stream")


@pytest.mark.parametrize(
    ("uri", "match"),
    [
        ("amqp://u:pw@h:notaport/v", "not a valid AMQP URI"),
        ("amqp://u:pw@h/v?heartbeet=1", "unknown option 'heartbeet'"),
        ("amqp://u:pw@h/v?heartbeat=0", "heartbeat"),
        ("amqp://u:pw@h/v?ssl_certfile=/c.pem", "need an amqps"),
        ("amqp://u:pw@h/v?frame_max=big", "frame_max"),
        ("amqp:h/v", "not an AMQP URI"),
    ],
)
def test_bad_uris_are_refused_without_the_password(uri, match):
    with pytest.raises(InvalidURIError, match=match) as info:
        AmqpTransport(uri)
    assert "pw@" not in str(info.value)
    if "@" in uri:
        assert ":***@" in str(info.value)


def test_an_unreachable_broker_is_reported_without_the_password(caplog):
    # Given a URI to a port nobody listens on, and a short retry_timeout
    transport = AmqpTransport("amqp://someone:topsecret@127.0.0.1:1/far?retry_timeout=0.6")
    caplog.set_level(logging.DEBUG)
    # When a task is submitted, the transport retries, then gives up with a clear error
    start = time.monotonic()
    with pytest.raises(TransportUnavailable) as info:
        transport.submit_task("some_queue", {})
    assert time.monotonic() - start < 3
    message = str(info.value)
    assert "127.0.0.1:1" in message and "vhost 'far'" in message and "retry_timeout" in message
    # And the password is nowhere: error, repr, logs
    assert "topsecret" not in message + repr(transport) + caplog.text
    assert "backend unreachable" in caplog.text
    transport.close()


def test_a_wrong_password_or_vhost_fails_at_once(amqp_uri):
    # A refused login is not an outage: no retrying, and the message says what to check
    wrong = amqp_uri.replace(PASSWORD, "not-the-Password")
    for uri, match in [(wrong, "refused access"), (amqp_uri + "_nope", "vhost exists")]:
        with AmqpTransport(uri + "?retry_timeout=30") as transport:
            start = time.monotonic()
            with pytest.raises(TransportError, match=match) as info:
                transport.submit_task("some_queue", {})
            assert not isinstance(info.value, TransportUnavailable)
            assert time.monotonic() - start < 5
            assert "not-the-Password" not in str(info.value)
            assert PASSWORD not in str(info.value)


# -- outages ----------------------------------------------------------------------------


def test_closing_every_connection_mid_run_loses_no_task(transport, queue, caplog):
    # Given a worker busy with a queue of tasks
    transport.submit_tasks(queue, [{"n": n} for n in range(30)])
    worker = Worker(open_transport(transport.uri), queue, pause=0.02)
    while len(worker.seen) < 10:
        time.sleep(0.01)
    # When the broker drops every connection, and a producer goes on submitting
    rabbitmqctl("close_all_connections", "--vhost", VHOST, "test: dropping connections")
    transport.submit_tasks(queue, [{"n": n} for n in range(30, 40)])
    # Then every task is processed (the one in flight maybe twice), and nothing is left
    worker.wait_for(set(range(40)), timeout=30)
    assert len(worker.seen) <= 41
    assert transport.queue_stats(queue).ready == 0
    assert PASSWORD not in caplog.text
    worker.transport.close()


def test_a_broker_restart_mid_run_loses_no_task(own_rabbitmq: PrivateRabbitMQ, queue):
    # Given a broker of our own (the shared one is never stopped), with ready tasks, a
    # delayed one, a failed one, and a worker busy with them
    transport = open_transport(own_rabbitmq.uri(heartbeat="1", retry_timeout="30"))
    transport.submit_tasks(queue, [{"n": n} for n in range(20)])
    transport.submit_task(queue, {"n": 100}, delay=2)
    transport.submit_task(queue + "_failed", {"n": -1})
    with transport.consumer(queue + "_failed") as consumer:
        delivery = consumer.reserve(timeout=5)
        assert delivery is not None
        consumer.fail(delivery, "RuntimeError: kept across the restart")
    worker = Worker(open_transport(transport.uri), queue, pause=0.02)
    while len(worker.seen) < 5:
        time.sleep(0.01)
    impatient = AmqpTransport(own_rabbitmq.uri(retry_timeout="1"))
    try:
        # When the broker stops, a producer's submit waits for it...
        own_rabbitmq.ctl("stop_app")
        late = threading.Thread(
            target=transport.submit_tasks, args=(queue, [{"n": n} for n in range(20, 25)])
        )
        late.start()
        # ... and one with a short retry_timeout gives up with a clear error
        with pytest.raises(TransportUnavailable, match=f"127.0.0.1:{own_rabbitmq.port}"):
            impatient.submit_task(queue, {"n": -2})
    finally:
        own_rabbitmq.ctl("start_app")
        impatient.close()
    late.join(30)
    # Then, once it is back, every task is processed, the delayed one too
    worker.wait_for({*range(25), 100}, timeout=30)
    assert [f.error for f in transport.failed_tasks(queue + "_failed")] == [
        "RuntimeError: kept across the restart"
    ]
    worker.transport.close()
    transport.close()


def test_a_silent_consumer_loses_its_task_within_the_recovery_bound(transport, queue):
    # Given a consumer in another process that reserved the task
    transport.submit_task(queue, {"n": 1})
    ctx = multiprocessing.get_context("spawn")
    report = ctx.Queue()
    child = ctx.Process(target=hold_task_in_child, args=(transport.uri, queue, report))
    child.start()
    frozen = [child.pid]
    try:
        assert report.get(timeout=30) == {"n": 1}
        # When it stops answering, with its relay, as a frozen host would (no heartbeats,
        # connection still open)
        relays = Path(f"/proc/{child.pid}/task/{child.pid}/children").read_text().split()
        assert len(relays) == 1
        frozen = [child.pid, int(relays[0])]
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        stopped = time.monotonic()
        # Then the broker gives the task back within the recovery bound, as an attempt
        delivery = taken_one(transport, queue, timeout=15)
        waited = time.monotonic() - stopped
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGKILL)
        child.join(10)
    assert delivery.payload == {"n": 1} and delivery.attempt == 2
    assert waited <= transport.features.recovery_seconds + 1.0, waited


# -- attempts -------------------------------------------------------------------------


def test_every_death_counts_so_a_killer_task_ends_its_run(transport, queue):
    # Given a task whose worker dies, twice
    transport.submit_task(queue, {"n": 1})
    ctx = multiprocessing.get_context("spawn")
    for _ in range(2):
        report = ctx.Queue()
        child = ctx.Process(target=hold_task_in_child, args=(transport.uri, queue, report))
        child.start()
        assert report.get(timeout=30) == {"n": 1}
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
    # Then its next delivery is its third attempt
    assert taken_one(transport, queue).attempt == 3


def test_handing_tasks_back_is_not_an_attempt_in_another_process(transport, queue):
    # Given a worker that reserved one task (and has the next one prefetched)
    transport.submit_tasks(queue, [{"n": 1}, {"n": 2}, {"n": 3}])
    first = open_transport(transport.uri)
    consumer = first.consumer(queue)
    one = consumer.reserve(timeout=5)
    assert one is not None
    consumer.ack(one)
    two = consumer.reserve(timeout=5)
    assert two is not None
    # When it releases its task and stops gracefully
    consumer.release(two)
    consumer.close()
    first.close()
    # Then another worker gets both remaining tasks as first attempts, in order
    taken = [taken_one(transport, queue) for _ in range(2)]
    assert [(d.payload["n"], d.attempt) for d in taken] == [(2, 1), (3, 1)]


# -- delays, counts, registry, claims -----------------------------------------------------


def test_a_delay_is_rounded_up_to_the_next_rung():
    assert [rung_for(d) for d in (0.1, 1, 1.5, 16, 300, 301, 604800)] == [
        0.5,
        1,
        2,
        30,
        300,
        600,
        604800,
    ]


def test_delayed_and_retrying_tasks_are_counted_apart(transport, queue):
    transport.submit_tasks(queue, [{"n": 1}, {"n": 2}])
    transport.submit_task(queue, {"n": 3}, delay=30)
    with transport.consumer(queue) as consumer:
        delivery = consumer.reserve(timeout=5)
        assert delivery is not None
        consumer.retry(delivery, delay=30, error="ValueError: later")
    stats = transport.queue_stats(queue)
    assert (stats.ready, stats.delayed, stats.retrying, stats.in_flight) == (1, 1, 1, None)
    assert transport.purge(queue) == 3


def test_a_delay_past_a_year_is_refused(transport, queue):
    with pytest.raises(InvalidTaskError, match="longer than a year"):
        transport.submit_task(queue, {}, delay=400 * 24 * 3600)
    assert transport.poll_queue(queue) == 0


def test_a_30_day_delay_waits_on_the_top_rung_carrying_its_due_time(transport, queue, connection):
    # Given a task delayed 30 days (longer than the longest rung, a week)
    before = time.time()
    transport.submit_task(queue, {"n": 1}, delay=30 * 24 * 3600)
    # Then it is delayed, not ready, and waits on the week rung with its due time
    stats = transport.queue_stats(queue)
    assert (stats.ready, stats.delayed) == (0, 1)
    [message] = on_shared_ladder(connection, queue)
    assert message.delivery_info["exchange"] == "asynctask.ladder"
    assert message.properties["application_headers"]["asynctask-rung"] == str(
        round(MAX_DELAY * 1000)
    )
    due = message.properties["application_headers"][DUE]
    assert before + 30 * 24 * 3600 - 1 < due < time.time() + 30 * 24 * 3600 + 1


@pytest.mark.parametrize("take", ["reserve", "get_task"])
def test_a_task_that_arrives_before_it_is_due_goes_round_again(
    transport, queue, channel, connection, take
):
    # Given a task that reached its queue a week into a longer wait (as the week rung
    # dead-letters it), due in an hour, and a task that is due
    transport.submit_task(queue, {"n": 0})  # declares the queue
    assert transport.get_task(queue) == {"n": 0}
    early = amqp.Message(b'{"n": 1}', application_headers={DUE: time.time() + 3600})
    due = amqp.Message(b'{"n": 2}', application_headers={DUE: time.time() - 5})
    channel.basic_publish(early, exchange=queue, routing_key=queue)
    channel.basic_publish(due, exchange=queue, routing_key=queue)
    deadline = time.monotonic() + 10  # a plain publish is not confirmed: wait until routed
    while channel.queue_declare(queue, passive=True).message_count < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # When a worker (or get_task) takes from the queue
    if take == "reserve":
        with transport.consumer(queue) as consumer:
            delivery = consumer.reserve(timeout=5)
            assert delivery is not None
            payload = delivery.payload
            consumer.ack(delivery)
            assert consumer.reserve(timeout=0.5) is None
    else:
        payload = transport.get_task(queue)
        assert transport.get_task(queue) is None
    # Then only the due task is run; the early one waits on the ladder again
    assert payload == {"n": 2}
    stats = transport.queue_stats(queue)
    assert (stats.ready, stats.delayed) == (0, 1)
    [message] = on_shared_ladder(connection, queue)
    assert message.properties["application_headers"]["asynctask-rung"] == "3600000"
    transport.purge(queue)


def test_queues_folds_duplicate_registrations_and_forgets_deleted_queues(transport, queue, channel):
    # Given a queue registered twice (two creators raced) and one deleted since
    transport.submit_task(queue, {})
    transport.submit_task(queue + "_gone", {})
    channel.basic_publish(amqp.Message(queue.encode(), delivery_mode=2), "", REGISTRY)
    channel.queue_delete(queue + "_gone")
    channel.exchange_delete(queue + "_gone")
    # When queues are listed, each is there once and the deleted one is not
    names = [q.name for q in transport.queues()]
    assert names.count(queue) == 1 and queue + "_gone" not in names
    # And the registry keeps one entry per live queue
    entries = []
    while (message := channel.basic_get(REGISTRY, no_ack=False)) is not None:
        entries.append(message.body.decode())
    channel.basic_recover(requeue=True)
    assert entries.count(queue) == 1 and queue + "_gone" not in entries


def test_a_claim_outlives_its_claimer_until_it_expires(transport, uri):
    key = "scheduler:" + unique_queue()
    with open_transport(uri) as claimer:
        assert claimer.claim(key, ttl=1.5) is True
    # the claimer is gone, its claim is not
    assert transport.claim(key, ttl=1.5) is False
    time.sleep(1.7)
    assert transport.claim(key, ttl=1.5) is True


def test_repr_and_errors_carry_no_password(transport):
    assert PASSWORD not in repr(transport) and USER in repr(transport)
    assert PASSWORD not in repr(transport.params)


def test_a_long_queue_name_keeps_its_siblings_within_amqp_limits(transport):
    # Given the longest queue name (100 characters), its siblings stay within AMQP's limit
    queue = "q" + "x" * 99
    transport.submit_task(queue, {"n": 1}, delay=0.4)
    with transport.consumer(queue) as consumer:
        delivery = consumer.reserve(timeout=5)
        assert delivery is not None
        consumer.fail(delivery, "boom")
    assert [f.payload for f in transport.failed_tasks(queue)] == [{"n": 1}]
    assert transport.purge_failed(queue) == 1


def test_a_queue_declared_by_an_operator_is_used_as_it_is(transport, queue, channel):
    # Given an operator who made the queue a quorum queue before asynctask came
    channel.queue_declare(
        queue, durable=True, auto_delete=False, arguments={"x-queue-type": "quorum"}
    )
    # When tasks are submitted and worked on, asynctask uses it as it is
    transport.submit_tasks(queue, [{"n": 1}, {"n": 2}])
    assert transport.poll_queue(queue) == 2
    assert [taken_one(transport, queue).payload["n"] for _ in range(2)] == [1, 2]


def test_a_quorum_queue_fails_a_task_past_the_broker_delivery_limit(amqp_uri, queue, channel):
    # Given a quorum queue whose broker delivery limit is 2
    with open_transport(f"{amqp_uri}?queue_type=quorum&delivery_limit=2&relay=false") as transport:
        transport.submit_task(queue, {"n": 1})
        # When its task is delivered and rejected three times (a basic.reject with
        # requeue: a failed delivery, counted by every RabbitMQ)
        for _ in range(3):
            deadline = time.monotonic() + 10
            while (message := channel.basic_get(queue)) is None:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            channel.basic_reject(message.delivery_info["delivery_tag"], requeue=True)
        # Then the broker itself moved it to the failed store, saying why
        deadline = time.monotonic() + 10
        while not (failed := transport.failed_tasks(queue)) and time.monotonic() < deadline:
            time.sleep(0.1)
        [record] = failed
        assert record.payload == {"n": 1} and "x-delivery-limit" in record.error
        assert transport.poll_queue(queue) == 0


def test_a_sweep_that_meets_another_task_hands_it_back_in_place_uncounted(uri, queue):
    """After a settle on a new connection, the consumer takes the head of the queue while
    it is one of its own settled tasks (``AmqpConsumer._sweep``; the contract's
    settle-after-drop test covers the head being its own). Here its task is not there
    (another consumer took it first): the fresh task it meets instead goes back to its
    place, marked released, so its next delivery is not counted as an attempt. Fails
    with the release marker left out: [(1, 1), (0, 2)], counted and sent to the tail."""
    with open_transport(f"{uri}&relay=false") as transport:
        transport.submit_tasks(queue, [{"n": 0}, {"n": 1}])
        consumer = transport.consumer(queue)
        consumer._settled_away.add(("taken-by-another-consumer", 0))
        with consumer._link.lock:
            consumer._connect()
            consumer._sweep()
        assert transport.queue_stats(queue).ready == 2
        taken = []
        for _ in range(2):
            delivery = consumer.reserve(timeout=5)
            assert delivery is not None
            taken.append((delivery.payload["n"], delivery.attempt))
            consumer.ack(delivery)
        consumer.close()
        assert taken == [(0, 1), (1, 1)]
        assert transport.queue_stats(queue).ready == 0


def test_a_sweep_that_misses_forgets_the_tasks_it_did_not_find(amqp_uri, queue):
    """A sweep that meets a task not its own forgets the settled tasks it looked for
    (their markers still have them dropped wherever they come): else one whose
    redelivery another consumer took stayed remembered, every later settle after a lost
    connection handed back one more task not its own, and a quorum queue counted each
    return toward its x-delivery-limit. Failed before: after three such settles, with
    delivery_limit=2, the broker moved the waiting task, never run, to the failed store."""
    uri = f"{amqp_uri}?queue_type=quorum&delivery_limit=2&relay=false"
    with open_transport(uri) as transport:
        # Given a waiting task, and a consumer that remembers a settled task of its own
        # whose redelivery another consumer took
        transport.submit_task(queue, {"n": 0})
        consumer = transport.consumer(queue)
        consumer._settled_away.add(("taken-by-another-consumer", 0))
        # When three settles after lost connections sweep
        for _ in range(3):
            with consumer._link.lock:
                consumer._connect()
                consumer._sweep()
        # Then the waiting task is still there, and runs as its first attempt
        delivery = consumer.reserve(timeout=5)
        assert delivery is not None and (delivery.payload, delivery.attempt) == ({"n": 0}, 1)
        consumer.ack(delivery)
        consumer.close()
        assert transport.failed_tasks(queue) == []


def test_tasks_handed_back_go_as_nacks_never_as_rejects(uri, queue, monkeypatch):
    """What a consumer hands back (a release, what it prefetched behind it, what a sweep
    meets) it did not run: it goes back by ``basic.nack`` with requeue,
    which RabbitMQ 4.3+ does not count toward a quorum queue's ``x-delivery-limit``, not
    ``basic.reject``, which it counts as a failed delivery (poison). Failed before: every
    hand-back was a ``basic.reject``. (RabbitMQ 3.10 here counts both: the test checks
    the method sent and that the tasks come back in place, first attempts.)"""
    sent: list[str] = []
    real_send = amqp.Channel.send_method

    def spy(self, sig, *args, **kwargs):
        name = {amqp.spec.Basic.Nack: "nack", amqp.spec.Basic.Reject: "reject"}.get(sig)
        if name is not None:
            sent.append(name)
        return real_send(self, sig, *args, **kwargs)

    monkeypatch.setattr(amqp.Channel, "send_method", spy)
    with open_transport(f"{uri}&relay=false") as transport:
        transport.submit_tasks(queue, [{"n": n} for n in range(4)])
        # When a consumer prefetching 3 releases its first task (and closes holding one:
        # returned by its closed channel, which 3.10 does not count)
        consumer = transport.consumer(queue, prefetch=3)
        first = consumer.reserve(timeout=5)
        assert first is not None and first.payload == {"n": 0}
        consumer.release(first)
        again = consumer.reserve(timeout=5)
        assert again is not None and again.payload == {"n": 0}
        consumer.close()
        nacked_by_release = len(sent)
        # And a sweep meets a task not its own
        sweeper = transport.consumer(queue)
        sweeper._settled_away.add(("taken-by-another-consumer", 0))
        with sweeper._link.lock:
            sweeper._connect()
            sweeper._sweep()
        sweeper.close()
        # Then each went back as a nack, none as a reject
        assert "reject" not in sent
        assert nacked_by_release >= 2 and len(sent) > nacked_by_release
        # And the tasks are in their places, each to run as its first attempt
        taken = []
        with transport.consumer(queue) as consumer:
            for _ in range(4):
                delivery = consumer.reserve(timeout=5)
                assert delivery is not None
                taken.append((delivery.payload["n"], delivery.attempt))
                consumer.ack(delivery)
        assert taken == [(0, 1), (1, 1), (2, 1), (3, 1)]
