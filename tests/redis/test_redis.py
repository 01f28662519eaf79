"""What the redis transport promises beyond the shared contract: foreign producers,
dropped connections, restarts, passwords, URIs."""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from asynctask.errors import InvalidURIError, TransportError, TransportUnavailable
from asynctask.testing import require_service, unique_queue
from asynctask.testing.contract import open_transport
from asynctask_redis import scripts
from asynctask_redis.transport import RedisTransport
from support import free_port, settle_through_restarts, start_redis_server

PASSWORD = "s3cr3t-pw"


@pytest.fixture
def queue() -> str:
    return unique_queue()


class RedisServer:
    """A private redis-server subprocess on 127.0.0.1, stopped and started at will."""

    def __init__(self, port: int, *args: str) -> None:
        self.port, self.args = port, args
        self.process: subprocess.Popen[bytes] | None = None
        self.socket: Path | None = None

    def start(self) -> None:
        self.process = start_redis_server(self.port, self.args, PASSWORD)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()  # SIGTERM: redis-server saves what it must, then exits
            self.process.wait(10)
            self.process = None


def _installed(program: str) -> None:
    if shutil.which(program) is None:
        raise FileNotFoundError(f"{program} is not on PATH")


def start_server(*args: str) -> RedisServer:
    require_service("redis-server", lambda: _installed("redis-server"))
    server = RedisServer(free_port(), "--requirepass", PASSWORD, *args)
    server.start()
    return server


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A second server that wants a password, keeps nothing on disk, and listens on a
    Unix socket too (``server.socket``)."""
    socket_path = tmp_path_factory.mktemp("redis") / "redis.sock"
    server = start_server("--save", "", "--appendonly", "no", "--unixsocket", str(socket_path))
    server.socket = socket_path
    yield server
    server.stop()


# -- other programs -----------------------------------------------------------------------


def test_a_task_pushed_with_redis_cli_is_processed(redis_uri, client, key_prefix, queue):
    require_service("redis-cli", lambda: _installed("redis-cli"))
    # Given a task pushed by redis-cli, as README.md tells another program to do
    subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-n", "9", "RPUSH", f"{key_prefix}_{queue}", '{"foo": 1}'],
        check=True,
        capture_output=True,
    )
    # When a consumer takes it
    with open_transport(redis_uri) as transport, transport.consumer(queue) as consumer:
        delivery = consumer.reserve(timeout=5)
        # Then it is the payload as pushed, on its first attempt
        assert delivery is not None and delivery.payload == {"foo": 1}
        assert delivery.attempt == 1
        consumer.ack(delivery)
    assert client.llen(f"{key_prefix}_{queue}") == 0
    assert not list(client.scan_iter(match=f"{key_prefix}:{queue}:processing:*"))


def test_a_foreign_task_whose_consumer_died_keeps_its_payload_and_counts(
    redis_uri, client, key_prefix, queue
):
    # Given a plain JSON object from another program, with an empty list and a big integer
    text = '{"items": [], "big": 12345678901234567890, "nested": {"a": [[]]}}'
    client.rpush(f"{key_prefix}_{queue}", text)
    with open_transport(redis_uri) as transport:
        first = transport.consumer(queue)
        delivery = first.reserve(timeout=5)
        assert delivery is not None
        # When its consumer dies (no more heartbeats: the key is gone)
        transport.forget(first)  # type: ignore[attr-defined]
        client.delete(first.heartbeat_key)  # type: ignore[attr-defined]
        # Then another consumer gets it again, as attempt 2, the payload exactly as pushed
        with transport.consumer(queue) as second:
            again = second.reserve(timeout=5)
            assert again is not None and again.attempt == 2
            assert again.payload == {
                "items": [],
                "big": 12345678901234567890,
                "nested": {"a": [[]]},
            }
            # and a retry keeps its id
            second.retry(again, delay=0, error="boom")
            third = second.reserve(timeout=5)
            assert third is not None and third.id == again.id and third.attempt == 3
            second.ack(third)


def test_an_envelope_written_by_another_program_is_honoured(redis_uri, client, key_prefix, queue):
    # Given our envelope, written by hand in another layout, with 2 attempts behind it
    client.rpush(
        f"{key_prefix}_{queue}",
        '{"payload": {"x": 1}, "attempts": 2, "id": "job-7", "__asynctask__": 1}',
    )
    with open_transport(redis_uri) as transport, transport.consumer(queue) as consumer:
        delivery = consumer.reserve(timeout=5)
        # Then its id and attempt count are kept
        assert delivery is not None and delivery.payload == {"x": 1}
        assert delivery.id == "job-7" and delivery.attempt == 3
        consumer.fail(delivery, "gave up")
        [failed] = transport.failed_tasks(queue)
        assert failed.id == "job-7" and failed.attempts == 3


# -- dropped connections and restarts -------------------------------------------------------


@pytest.fixture(scope="module")
def private() -> Iterator[RedisServer]:
    """A server of this module's own, so ``CLIENT KILL TYPE normal`` touches no other test."""
    server = start_server("--save", "", "--appendonly", "no")
    yield server
    server.stop()


def test_killing_every_connection_mid_run_loses_no_task(private, queue):
    # Given 500 tasks and a consumer draining them in a thread
    total, kills = 500, 4
    uri = f"redis://:{PASSWORD}@127.0.0.1:{private.port}/0?recovery_seconds=3"
    transport = open_transport(uri)
    admin = redis.Redis(port=private.port, password=PASSWORD)
    transport.submit_tasks(queue, [{"n": n} for n in range(total)])
    taken: list[int] = []

    def drain() -> None:
        with transport.consumer(queue) as consumer:
            while len(set(taken)) < total and (delivery := consumer.reserve(timeout=3)):
                time.sleep(0.001)  # a little work, so that the kills land mid-run
                taken.append(delivery.payload["n"])
                consumer.ack(delivery)

    thread = threading.Thread(target=drain)
    thread.start()
    # When CLIENT KILL TYPE normal drops every client connection, a few times, mid-run
    killed = 0
    for k in range(1, kills + 1):
        deadline = time.monotonic() + 20
        while len(taken) < k * total // (kills + 1) and time.monotonic() < deadline:
            time.sleep(0.005)
        killed += int(admin.execute_command("CLIENT", "KILL", "TYPE", "normal") or 0)
    thread.join(60)
    assert killed >= kills  # the consumer's connection at least, each time
    # Then every task was processed, none twice beyond one per kill, and nothing is left
    counts = Counter(taken)
    assert set(counts) == set(range(total))
    assert sum(counts.values()) - total <= kills
    stats = transport.queue_stats(queue)
    assert (stats.ready, stats.in_flight, stats.failed) == (0, 0, 0)
    transport.close()
    admin.close()


def test_a_restarted_server_costs_time_not_tasks(tmp_path: Path, queue, caplog):
    # Given a server that keeps its data in an append-only file, and 10 tasks on it
    server = start_server("--save", "", "--appendonly", "yes", "--dir", str(tmp_path))
    try:
        uri = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0?retry_timeout=20"
        transport = open_transport(uri)
        transport.submit_tasks(queue, [{"n": n} for n in range(10)])
        consumer = transport.consumer(queue)
        taken = []
        for _ in range(4):
            delivery = consumer.reserve(timeout=5)
            assert delivery is not None
            taken.append(delivery.payload["n"])
            consumer.ack(delivery)
        # When the server restarts while a producer submits one more task
        caplog.set_level(logging.WARNING, logger="asynctask.transport")
        server.stop()
        late = threading.Thread(target=transport.submit_task, args=(queue, {"n": 10}))
        late.start()
        time.sleep(0.5)
        server.start()
        late.join(30)
        # Then the consumer goes on, and every task is processed
        while (delivery := consumer.reserve(timeout=1)) is not None:
            taken.append(delivery.payload["n"])
            consumer.ack(delivery)
        consumer.close()
        assert sorted(set(taken)) == list(range(11))
        assert len(taken) - 11 <= 1  # the ack in flight at the stop may be lost
        assert transport.queue_stats(queue).in_flight == 0
        # And the outage was logged once, the password never
        outages = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(outages) == 1
        assert all(PASSWORD not in r.getMessage() for r in caplog.records)
        transport.close()
    finally:
        server.stop()


def test_every_settle_call_survives_a_server_restart(tmp_path: Path, queue):
    """Each settle call made while the server is away (restarted with its append-only
    file) does its work once the server is back; the ack rides on close."""
    server = start_server("--save", "", "--appendonly", "yes", "--dir", str(tmp_path))
    try:
        uri = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0?retry_timeout=20"
        transport = open_transport(uri)
        transport.submit_tasks(queue, [{"n": n} for n in range(5)])
        consumer = transport.consumer(queue, prefetch=4)
        held = [consumer.reserve(timeout=5) for _ in range(4)]
        assert [d.payload["n"] for d in held if d] == [0, 1, 2, 3]
        # When the server restarts before each settle call (the ack rides on the close)
        settle_through_restarts(consumer, held, server)
        # Then each did its work: one retrying, one failed, 2 (released) and 4 ready
        stats = transport.queue_stats(queue)
        assert (stats.ready, stats.retrying, stats.in_flight, stats.failed) == (2, 1, 0, 1)
        assert [transport.get_task(queue) for _ in range(2)] == [{"n": 2}, {"n": 4}]
        transport.close()
    finally:
        server.stop()


# -- passwords ----------------------------------------------------------------------------


def test_a_password_protected_server_works_and_the_password_is_never_shown(secured, queue, caplog):
    caplog.set_level(logging.DEBUG)
    for uri in (
        f"redis://:{PASSWORD}@127.0.0.1:{secured.port}/0",
        f"redis://default:{PASSWORD}@127.0.0.1:{secured.port}?db=1",
        f"unix://:{PASSWORD}@{secured.socket}?db=2",
    ):
        # Given the password in the URI, the server takes tasks
        with open_transport(uri) as transport:
            transport.submit_task(queue, {"n": 1})
            with transport.consumer(queue) as consumer:
                delivery = consumer.reserve(timeout=5)
                assert delivery is not None and delivery.payload == {"n": 1}
                consumer.ack(delivery)
            assert PASSWORD not in repr(transport)
            assert PASSWORD not in repr(consumer)
    # And a wrong or missing password is a clear error that does not show it
    for uri, words in (
        (f"redis://:wrong-{PASSWORD}@127.0.0.1:{secured.port}/0", "refused the credentials"),
        (f"redis://127.0.0.1:{secured.port}/0", "refused the credentials"),
    ):
        with open_transport(uri) as transport:
            with pytest.raises(TransportError, match=words) as info:
                transport.submit_task(queue, {})
            assert f"127.0.0.1:{secured.port}" in str(info.value)
            assert PASSWORD not in str(info.value)
    assert not [r for r in caplog.records if PASSWORD in r.getMessage()]


def test_an_unreachable_server_names_host_and_port_but_not_the_password(queue):
    port = free_port()
    uri = f"redis://:{PASSWORD}@127.0.0.1:{port}/0?retry_timeout=0.3&connect_timeout=0.5"
    transport = open_transport(uri)
    start = time.monotonic()
    with pytest.raises(TransportUnavailable) as info:
        transport.submit_task(queue, {})
    assert time.monotonic() - start < 5
    assert f"127.0.0.1:{port}" in str(info.value) and "retry_timeout" in str(info.value)
    assert PASSWORD not in str(info.value) and PASSWORD not in repr(transport)
    transport.close()


# -- URIs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "where", "expected"),
    [
        ("redis://cache.example", "cache.example:6379", {"host": "cache.example"}),
        ("redis://cache.example:6380", "cache.example:6380", {"port": 6380}),
        ("redis://cache.example:6380?db=2", "cache.example:6380", {"db": 2}),
        (f"redis://:{PASSWORD}@h:6380/2", "h:6380", {"db": 2, "password": PASSWORD}),
        (f"redis://ann:{PASSWORD}@h", "h:6379", {"username": "ann", "password": PASSWORD}),
        ("rediss://h:6390", "h:6390", {"host": "h"}),
        ("unix:///run/redis.sock?db=1", "unix socket /run/redis.sock", {"db": 1}),
    ],
)
def test_uri_forms_are_read_as_redis_py_reads_them(uri, where, expected):
    transport = RedisTransport(uri)  # no connection is opened yet
    kwargs = transport.server.pool.connection_kwargs
    assert transport.server.where == where
    assert {k: kwargs.get(k) for k in expected} == expected
    assert PASSWORD not in repr(transport)
    classes = {"rediss": "SSLConnection", "unix": "UnixDomainSocketConnection"}
    scheme = uri.split(":")[0]
    assert transport.server.pool.connection_class.__name__ == classes.get(scheme, "Connection")
    transport.close()


def test_our_options_are_read_and_kept_from_redis_py():
    transport = RedisTransport(
        "redis://h/3?key_prefix=jobs&pool_size=7&socket_timeout=4&connect_timeout=2"
        "&recovery_seconds=4&heartbeat_seconds=0.5&retry_timeout=3"
    )
    pool = transport.server.pool
    assert transport.ready_key("mail") == "jobs_mail"
    assert transport.key("mail", "failed") == "jobs:mail:failed"
    assert pool.max_connections == 7
    assert pool.connection_kwargs["socket_timeout"] == 4
    assert pool.connection_kwargs["socket_connect_timeout"] == 2
    assert pool.connection_kwargs["db"] == 3
    assert transport.features.recovery_seconds == 4
    assert transport.heartbeat_seconds == 0.5 and transport.retry_timeout == 3
    for ours in ("key_prefix", "pool_size", "recovery_seconds", "heartbeat_seconds"):
        assert ours not in pool.connection_kwargs
    transport.close()


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        (f"redis://:{PASSWORD}@h:99999", "not a valid Redis URI"),
        (f"redis://:{PASSWORD}@h/socket/path", "the database number"),
        (f"redis://:{PASSWORD}@h?db=two", "not a valid Redis URI"),
        (f"redis://:{PASSWORD}@h?colour=blue", "unknown option 'colour'"),
        ("unix://", "names no socket"),
        (f"redis://:{PASSWORD}@h?key_prefix=my_app", "may not contain '_'"),
        ("redis://h?key_prefix=my:app", "key_prefix"),
        ("redis://h?recovery_seconds=8&heartbeat_seconds=3", "heartbeat_seconds=3"),
        ("redis://h?socket_timeout=1", "socket_timeout"),
    ],
)
def test_bad_uris_are_refused_clearly_and_without_the_password(uri, words):
    with pytest.raises(InvalidURIError, match=words) as info:
        open_transport(uri)
    assert PASSWORD not in str(info.value)


# -- costs that grow with the store -------------------------------------------------------


def test_failed_tasks_by_id_are_found_through_the_index_and_without_it(
    redis_uri, client, key_prefix, queue
):
    """Requeue and purge by id read the index ``P:Q:failed:ids``, not the whole list; a
    record written without it (an older version) is still found, by a one-time rebuild."""
    transport = open_transport(redis_uri)
    transport.submit_tasks(queue, [{"n": n} for n in range(3)])
    with transport.consumer(queue, prefetch=3) as consumer:
        for _ in range(3):
            delivery = consumer.reserve(timeout=5)
            assert delivery is not None
            consumer.fail(delivery, "boom")
    index = f"{key_prefix}:{queue}:failed:ids"
    first, second, third = transport.failed_tasks(queue)
    assert client.hlen(index) == 3
    # Given an index that lost an entry, as a record written by an older version has none
    client.hdel(index, third.id)
    # Then ids are found all the same, and the index is whole again
    assert transport.requeue_failed(queue, ids=[third.id, "not-an-id"]) == 1
    assert transport.purge_failed(queue, ids=[first.id]) == 1
    assert client.hkeys(index) == [second.id.encode()]
    assert [f.id for f in transport.failed_tasks(queue)] == [second.id]
    assert transport.purge_failed(queue) == 1
    assert not client.exists(index, f"{key_prefix}:{queue}:failed")
    transport.close()


def test_the_set_of_queue_names_forgets_empty_queues(redis_uri, client, key_prefix, queue):
    transport = open_transport(redis_uri)
    transport.submit_task(queue, {})
    assert queue in [q.name for q in transport.queues()]
    assert transport.get_task(queue) == {}
    # When the queue holds nothing, listing the queues prunes its name
    assert queue not in [q.name for q in transport.queues()]
    assert not client.sismember(f"{key_prefix}:queues", queue)
    # And a new task brings it back at once (the submit adds the name itself)
    transport.submit_task(queue, {})
    assert queue in [q.name for q in transport.queues()]
    transport.close()


@pytest.mark.parametrize(
    ("tracked", "options", "count"),
    [
        (False, {}, 2),
        (False, {}, 1),
        (False, {"priority": 3}, 2),
        (False, {"delay": 60}, 2),
        (True, {}, 2),
    ],
    ids=["untracked-plain", "untracked-one", "untracked-urgent", "untracked-delayed", "tracked"],
)
def test_a_submit_retried_after_a_lost_reply_is_stored_once_by_either_script(
    transport, client, key_prefix, queue, tracked, options, count
):
    """An untracked queue's plain submit goes through ``PUSH`` (one task: packed and read
    by our own code, ``RedisTransport._push_one``), the others through ``PUT`` (the
    contract's test covers a tracked queue only): each stores nothing on the retry.
    Failed with ``PUSH`` without its guard key (the retry pushed the tasks twice)."""
    transport.state().set_tracking(queue, tracked)
    primitive = transport._put
    lost: list[str] = []

    def reply_lost(queue: str, tasks, delay: float, submit_options):
        stored = primitive(queue, tasks, delay, submit_options)
        if tasks[0][0] not in lost:  # the first try: stored, its reply lost
            lost.append(tasks[0][0])
            raise TransportUnavailable("the reply was lost (a test)")
        return stored

    transport._put = reply_lost
    try:
        transport.submit_tasks(queue, [{"n": n} for n in range(count)], **options)
    finally:
        del transport._put
    stats = transport.queue_stats(queue)
    assert len(lost) == 1 and stats.ready + stats.delayed == count
    # the queue is listed (the script added its name)
    assert client.sismember(f"{key_prefix}:queues", queue)
    transport.purge(queue)
    transport.state().set_tracking(queue, True)


def test_a_one_by_one_submit_reads_every_reply_redis_gives(queue):
    """The plain one-task submit reads simple replies itself (``connection.exec_packed``
    for its first try, ``reply_to`` for a retry's ``PUSH``); any other reply goes to
    redis-py's parser: a server that lost the script (NOSCRIPT) gets it again, an error
    is raised as redis-py raises it, and the connection stays in step for the next call.
    A private server: its scripts are flushed."""
    server = start_server("--save", "", "--appendonly", "no")
    transport = open_transport(f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0")
    client = redis.Redis(port=server.port, password=PASSWORD)
    try:
        assert isinstance(transport, RedisTransport)
        # Given an untracked queue (its plain submits run PUSH) with one task in it
        transport.state().set_tracking(queue, False)
        transport.submit_task(queue, {"n": 0})
        ready = transport.ready_key(queue)
        # When the server forgets its scripts, and a submit's reply is lost: its retry
        # runs PUSH (loaded again), which stores nothing twice
        client.script_flush()
        primitive, tries = transport._put, []

        def reply_lost(*args: Any) -> Any:
            tries.append(primitive(*args))
            if len(tries) == 1:
                raise TransportUnavailable("the reply was lost (a test)")
            return tries[-1]

        transport._put = reply_lost  # type: ignore[method-assign]
        try:
            transport.submit_task(queue, {"n": 1})
        finally:
            del transport._put
        assert len(tries) == 2 and client.llen(ready) == 2
        assert client.script_exists(scripts.PUSH.sha) == [True]  # the retry ran it
        # When the ready list's key holds a string: Redis's error, named
        client.delete(ready)
        client.set(ready, "not a list")
        with pytest.raises(TransportError, match="WRONGTYPE"):
            transport.submit_task(queue, {"n": 2})
        # Then the connection is in step: the next submits are stored, each once
        client.delete(ready)
        ids = [transport.submit_task(queue, {"n": n}) for n in range(3, 6)]
        assert [t.id for t in transport.peek(queue, limit=10)] == ids
    finally:
        client.close()
        transport.close()
        server.stop()


def test_a_plain_submit_where_multi_is_refused_is_stored_once_and_succeeds(queue):
    """The first try of a plain one-task submit is ``MULTI``, ``SET`` of the guard,
    ``RPUSH``, ``SADD``, ``EXEC`` in one write (``_push_first``). Where ``MULTI`` is
    refused (an ACL without ``@transaction``, a proxy, a renamed command) the commands
    behind it run alone: the task is stored, so the submit must succeed, not fail (the
    caller's own retry, with a new id, would store it twice), and the next submits take
    ``PUSH``. Failed before the fix: every submit raised TransportError (NOPERM) with
    its task stored. A private server, with a user that may not run MULTI."""
    server = start_server("--save", "", "--appendonly", "no")
    client = redis.Redis(port=server.port, password=PASSWORD)
    client.acl_setuser(
        "nomulti",
        enabled=True,
        passwords=["+nomulti-pw"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-multi"],
    )
    transport = open_transport(f"redis://nomulti:nomulti-pw@127.0.0.1:{server.port}/0")
    try:
        assert isinstance(transport, RedisTransport)
        # Given an untracked queue: its plain submits take the packed fast path
        transport.state().set_tracking(queue, False)
        # When three tasks are submitted one by one
        ids = [transport.submit_task(queue, {"n": n}) for n in range(3)]
        # Then each is stored once, in order, and the transport no longer sends MULTI
        assert [t.id for t in transport.peek(queue, limit=10)] == ids
        assert client.llen(transport.ready_key(queue)) == 3
        assert transport.multi_submits is False
        # And where RPUSH is refused too, the submit fails and stores nothing (failed
        # before: the PUSH that followed found the guard's SET and said it was stored)
        client.execute_command("ACL", "SETUSER", "nomulti", "-rpush")
        refused = open_transport(f"redis://nomulti:nomulti-pw@127.0.0.1:{server.port}/0")
        try:
            other = unique_queue()
            refused.state().set_tracking(other, False)
            with pytest.raises(TransportError):
                refused.submit_task(other, {"n": 9})
            assert client.llen(refused.ready_key(other)) == 0
        finally:
            refused.close()
    finally:
        client.close()
        transport.close()
        server.stop()
