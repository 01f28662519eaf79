"""Task statuses on AMQP (DESIGN.md section 6): priorities through ``max_priority``, and
everything else through the store named by ``asynctask_state`` (here a filesys folder).

The shared ``StatusContract`` (tests/amqp/test_contract.py) runs the full stories; these
pin what is particular to AMQP: the errors without the settings, the queue argument,
the relay, whose ``start`` runs in the worker's process, and, with statuses in Redis,
the start that waits for no reply (``asynctask_redis.statusfeed``) and the cancels it
must still hear.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from asynctask.errors import InvalidTaskError
from asynctask.status import StatusNotKept
from asynctask.testing import unique_queue
from asynctask.testing.contract import open_transport
from slowlink import SlowLink
from support import cancel_while_running_in_process


def _with(uri: str, option: str) -> str:
    return f"{uri}{'&' if '?' in uri else '?'}{option}"


def test_without_asynctask_state_the_status_calls_name_the_setting(amqp_uri):
    queue = unique_queue()
    with open_transport(amqp_uri) as t:
        tid = t.submit_task(queue, {})
        for call in (lambda: t.status(tid), lambda: t.wait(tid, 1), lambda: t.cancel(tid)):
            with pytest.raises(StatusNotKept, match="asynctask_state"):
                call()
        # expires and unique_key need a store too: refused before anything is sent
        with pytest.raises(StatusNotKept, match="asynctask_state"):
            t.submit_task(queue, {}, expires=60)
        with pytest.raises(StatusNotKept, match="asynctask_state"):
            t.submit_task(queue, {}, unique_key="k")
        assert t.queue_stats(queue).ready == 1
        t.purge(queue)


def test_a_priority_without_max_priority_is_refused_naming_it(amqp_uri):
    queue = unique_queue()
    with open_transport(amqp_uri) as t:
        with pytest.raises(InvalidTaskError, match="max_priority"):
            t.submit_task(queue, {}, priority=5)
        assert t.submit_task(queue, {}, priority=0)
        t.purge(queue)


def test_max_priority_takes_the_highest_first_fifo_within(amqp_uri):
    # Given new queues declared with x-max-priority
    queue = unique_queue()
    with open_transport(_with(amqp_uri, "max_priority=9")) as t:
        order = [0, 9, 5, 0, 5, 9]
        ids = [t.submit_task(queue, {"p": p}, priority=p) for p in order]
        # When a consumer takes them
        taken = []
        with t.consumer(queue) as consumer:
            for _ in order:
                delivery = consumer.reserve(timeout=10)
                assert delivery is not None
                taken.append(delivery.id)
                consumer.ack(delivery)
        # Then the highest come first, each priority in submission order
        assert taken == [ids[1], ids[5], ids[2], ids[4], ids[0], ids[3]]


def test_a_retried_task_keeps_its_priority(amqp_uri):
    queue = unique_queue()
    with open_transport(_with(amqp_uri, "max_priority=9")) as t:
        urgent = t.submit_task(queue, {}, priority=9)
        with t.consumer(queue) as consumer:
            consumer.retry(consumer.reserve(timeout=10), 0.1, "ValueError: again")
        plain = t.submit_task(queue, {})
        # both ready once the back-off is over: the retried urgent one comes first
        deadline = time.monotonic() + 10
        while t.queue_stats(queue).ready != 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        with t.consumer(queue) as consumer:
            taken = []
            for _ in range(2):
                delivery = consumer.reserve(timeout=10)
                taken.append(delivery.id)
                consumer.ack(delivery)
        assert taken == [urgent, plain]


@pytest.mark.parametrize("relay", ["true", "false"])
def test_start_asks_the_asynctask_state_store_in_the_workers_process(
    amqp_uri, tmp_path: Path, relay
):
    # Given statuses kept in a filesys folder, and a consumer (through the relay or not)
    queue = unique_queue()
    with open_transport(_with(amqp_uri, f"relay={relay}")) as t:
        t.state_uri = f"filesys:{tmp_path / 'state'}"
        doomed = t.submit_task(queue, {"n": 1})
        kept = t.submit_task(queue, {"n": 2}, expires=60)
        assert t.status(doomed).state == "queued"
        assert t.cancel(doomed) is True
        with t.consumer(queue) as consumer:
            # When the worker starts them: the cancelled one is dropped, the other runs
            first = consumer.reserve(timeout=10)
            assert first.id == doomed
            assert consumer.start(first) == "cancelled"
            second = consumer.reserve(timeout=10)
            assert second.id == kept
            assert consumer.start(second) == "run"
            assert t.status(kept).state == "running"
            t.state().settled(queue, kept, "succeeded", 1, result_json='"ok"')
            consumer.ack(second)
        # Then the cancelled one is gone from the broker, the other succeeded
        assert t.wait(kept, timeout=5).result == "ok"
        assert t.queue_stats(queue).ready == 0
        assert t.failed_tasks(queue) == []


def test_a_refused_publish_leaves_no_status_and_frees_the_unique_key(amqp_uri, tmp_path):
    # Given statuses kept in a folder, and a submit the broker side refuses after the
    # store recorded it (a priority without max_priority)
    queue = unique_queue()
    with open_transport(amqp_uri) as t:
        t.state_uri = f"filesys:{tmp_path / 'state'}"
        with pytest.raises(InvalidTaskError, match="max_priority"):
            t.submit_task(queue, {}, unique_key="k", priority=5)
        # Then nothing of it is left: the key is free, and no status was kept
        tid = t.submit_task(queue, {}, unique_key="k")
        assert t.status(tid).state == "queued"
        assert [p.name for p in (tmp_path / "state" / ".status" / "live").iterdir()] == [tid]
        assert t.queue_stats(queue).ready == 1  # a new task, not the refused one's id
        t.purge(queue)


# -- statuses in Redis: starts that need not wait (asynctask_redis.statusfeed) ----------


def _take(consumer) -> Any:
    delivery = consumer.reserve(timeout=10)
    assert delivery is not None
    return delivery


def _finish(consumer, delivery, result_json: str | None = None) -> None:
    """The consumer's calls after process() returned, without the run loop's flush of
    the status feed before the ack (``attempts.record(..., send_now=True)``): the feed holds
    the success, as these tests of its holding need."""
    consumer.ack(delivery, result_json)
    consumer.record_outcome(delivery, "succeeded", result_json=result_json)


@pytest.mark.parametrize("relay", ["true", "false"])
def test_with_state_in_redis_a_start_and_its_outcome_wait_for_no_reply(
    amqp_uri, redis_state, monkeypatch, relay
):
    """Once the consumer's status feed is open, a task's ``running`` mark and its
    outcome are sent to Redis without waiting for a reply. (Fails when the start or the
    outcome waits again: each was one waited script before, two round trips a task.)"""
    queue = unique_queue()
    with open_transport(_with(amqp_uri, f"relay={relay}")) as t:
        t.state_uri = redis_state
        first, second = t.submit_tasks(queue, [{"n": 1}, {"n": 2}])
        redis_transport = t.state().transport  # type: ignore[attr-defined]
        with t.consumer(queue, prefetch=2) as consumer:
            # Given a consumer whose first start opened its feed (a round trip)
            one = _take(consumer)
            assert consumer.start(one) == "run"
            _finish(consumer, one)
            two = _take(consumer)
            waited: list[str] = []
            real = redis_transport.execute

            def counting(fn: Any, *args: Any) -> Any:
                waited.append(getattr(fn, "__name__", repr(fn)))
                return real(fn, *args)

            monkeypatch.setattr(redis_transport, "execute", counting)
            # When the second task starts
            assert consumer.start(two) == "run"
            # Then nothing was waited for, and Redis has it running
            assert waited == []
            monkeypatch.undo()
            _eventually(lambda: t.status(second).state == "running")
            # And its outcome is sent without waiting either
            monkeypatch.setattr(redis_transport, "execute", counting)
            _finish(consumer, two, '"ok"')
            assert waited == []
            monkeypatch.undo()
        # Then (the consumer closed: every reply read) both succeeded, in order
        assert t.wait(second, timeout=5).result == "ok"
        assert t.status(first).state == "succeeded"
        assert t.queue_stats(queue).ready == 0


@pytest.mark.parametrize("relay", ["true", "false"])
def test_with_state_in_redis_a_reserve_that_waits_sends_the_outcome_held_first(
    amqp_uri, redis_state, monkeypatch, relay
):
    """The feed holds a success for the next start; a consumer about to wait for a task
    sends it first, so ``wait`` on the last task of a queue returns at once. (Fails when
    the reserve waits without ``flush_status_feed``: with ``HOLD`` set to a minute the
    outcome stays held through the reserve.)"""
    from asynctask_amqp import relayedfeed
    from asynctask_redis import statusfeed

    monkeypatch.setattr(statusfeed, "HOLD", 60.0)
    monkeypatch.setattr(relayedfeed, "HOLD", 60.0)  # (the relay makes the writes)
    queue = unique_queue()
    with open_transport(_with(amqp_uri, f"relay={relay}")) as t:
        t.state_uri = redis_state
        (only,) = t.submit_tasks(queue, [{"n": 1}])
        with t.consumer(queue) as consumer:
            # Given the queue's one task, started and succeeded (its outcome held)
            one = _take(consumer)
            assert consumer.start(one) == "run"
            _finish(consumer, one, '"ok"')
            assert t.status(only).state == "running"
            # When the consumer waits for the next task (there is none)
            assert consumer.reserve(timeout=0.5) is None
            # Then the outcome was sent before it waited
            assert t.status(only).state == "succeeded"
            assert t.wait(only, timeout=0.1).result == "ok"


def test_with_state_in_redis_a_cancel_made_while_the_feed_was_lost_stops_the_task(
    amqp_uri, redis_state
):
    """A cancel published while the consumer's cancel feed was down reaches nobody; the
    feed opened again reads the queue's cancels kept in Redis, so the task still never
    runs. (Fails with a feed that reopens without reading them: the task runs.)"""
    import redis

    queue = unique_queue()
    with open_transport(_with(amqp_uri, "relay=false")) as t:
        t.state_uri = redis_state
        a, b, c = t.submit_tasks(queue, [{"n": 1}, {"n": 2}, {"n": 3}])
        with t.consumer(queue, prefetch=3) as consumer:
            # Given a consumer whose feed is open, then cut (a killed connection)
            one = _take(consumer)
            assert consumer.start(one) == "run"
            _finish(consumer, one)
            feed = consumer._status_feed[1]
            assert feed is not None and feed._cancels.live
            client = redis.Redis.from_url(redis_state.partition("?")[0])
            host, port = feed._cancels._conn._sock.getsockname()[:2]
            assert client.client_kill(f"{host}:{port}")
            client.close()
            # When a task is cancelled while the feed is down
            assert t.cancel(c) is True
            # Then the next start finds the feed lost, and asks Redis
            two = _take(consumer)
            assert consumer.start(two) == "run"
            _finish(consumer, two)
            # And the start after opens the feed again, knows of the cancel: not run
            three = _take(consumer)
            assert three.id == c
            assert consumer.start(three) == "cancelled"
            assert feed._cancels.live
        assert t.wait(b, timeout=5).state == "succeeded"
        assert t.status(c).state == "cancelled"
        assert t.status(a).state == "succeeded"
        assert t.queue_stats(queue).ready == 0


def test_with_state_in_redis_a_task_cancelled_before_any_feed_never_runs(amqp_uri, redis_state):
    """A task cancelled while it waited in the queue, before the consumer existed: its
    consumer's feed knows it from the cancels kept in Redis, so it never runs, even
    prefetched behind a task that opened the feed. (Fails when the feed only hears the
    cancels published after it subscribed.)"""
    queue = unique_queue()
    with open_transport(_with(amqp_uri, "relay=false")) as t:
        t.state_uri = redis_state
        kept, doomed = t.submit_tasks(queue, [{"n": 1}, {"n": 2}])
        assert t.cancel(doomed) is True
        with t.consumer(queue, prefetch=2) as consumer:
            one = _take(consumer)
            assert consumer.start(one) == "run"
            _finish(consumer, one)
            two = _take(consumer)
            assert two.id == doomed
            assert consumer.start(two) == "cancelled"
        assert t.wait(kept, timeout=5).state == "succeeded"
        assert t.status(doomed).state == "cancelled"
        assert t.queue_stats(queue).ready == 0


def test_with_state_in_redis_a_task_past_its_expires_is_not_run(amqp_uri, redis_state):
    """A task submitted with ``expires`` carries it in a header, and its start asks
    Redis, whose clock decides. (Fails with a start that trusts the feed for it: the
    expired task runs.)"""
    queue = unique_queue()
    with open_transport(_with(amqp_uri, "relay=false")) as t:
        t.state_uri = redis_state
        first = t.submit_task(queue, {"n": 1})
        late = t.submit_task(queue, {"n": 2}, expires=0.3)
        with t.consumer(queue, prefetch=2) as consumer:
            one = _take(consumer)
            assert consumer.start(one) == "run"  # the feed is open
            _finish(consumer, one)
            time.sleep(0.4)  # its time passes (a clock, not an event, decides)
            two = _take(consumer)
            assert two.id == late
            assert consumer.start(two) == "expired"
        assert t.wait(first, timeout=5).state == "succeeded"
        assert t.status(late).state == "expired"


def test_with_state_in_redis_writes_sent_on_a_lost_connection_are_made_again(amqp_uri, redis_state):
    """The writes sent without waiting whose replies were not read when the feed's
    connection was cut are made again, in order. (Fails with a feed that forgets what
    it sent: the task stays running.)"""
    import redis

    queue = unique_queue()
    with open_transport(_with(amqp_uri, "relay=false")) as t:
        t.state_uri = redis_state
        first, second = t.submit_tasks(queue, [{"n": 1}, {"n": 2}])
        with t.consumer(queue, prefetch=2) as consumer:
            # Given a consumer whose feed wrote once, then lost its writing connection
            one = _take(consumer)
            assert consumer.start(one) == "run"
            _finish(consumer, one)
            feed = consumer._status_feed[1]
            client = redis.Redis.from_url(redis_state.partition("?")[0])
            host, port = feed._conn._sock.getsockname()[:2]
            assert client.client_kill(f"{host}:{port}")
            client.close()
            # When the next task starts and succeeds (written into the cut connection)
            two = _take(consumer)
            assert consumer.start(two) == "run"
            _finish(consumer, two, '"ok"')
        # Then its outcome reached Redis all the same
        assert t.wait(second, timeout=5).result == "ok"
        assert t.status(first).state == "succeeded"


#: a worker process whose fourth task kills it (SIGKILL: the OOM killer, the
#: supervisor's kill), the first three run by the run loop (succeeded, with or without
#: a result); its status feed's thread never sends what is held (``HOLD`` a minute)
_DIES_ON_THE_FOURTH = textwrap.dedent(
    """
    import os, signal, sys, time
    from asynctask import AsyncTaskWorker
    from asynctask.runner import LoopOptions, run_loop
    from asynctask.testing.contract import open_transport
    from asynctask_redis import statusfeed

    uri, state, queue, result = sys.argv[1:5]
    statusfeed.HOLD = 60.0

    class DiesOnTheFourth(AsyncTaskWorker):
        name = "asynctask_amqp_dies_on_the_fourth"

        def process(self, payload):
            if payload["n"] == 0:
                time.sleep(0.5)  # the rest arrive (prefetch): no reserve waits after it
            if payload["n"] == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return payload["n"] if result == "value" else None

    with open_transport(uri) as t:
        t.state_uri = state
        run_loop(DiesOnTheFourth(), t, queue, LoopOptions(prefetch=8))
    """
)


@pytest.mark.parametrize("way", ["direct", "late"])
@pytest.mark.parametrize("result", ["value", "none"])
@pytest.mark.parametrize("relay", ["true", "false"])
def test_with_state_in_redis_a_worker_killed_after_its_successes_leaves_them_succeeded(
    amqp_uri, redis_state, relay, result, way
):
    """The run loop has an outcome its status feed holds written (its reply read)
    before it acknowledges the task: once the broker forgets a task, only the store
    knows it succeeded. (Fails when the ack goes first, relay or not, result or none:
    the feed held the three successes, the worker died with them, and they read
    ``running``/``queued`` for good while the broker had forgotten them. The ``late``
    way sends the worker's Redis writes through ``tests/slowlink.py``, 0.2 s late,
    dropped when the worker dies: what a connection reset does to a write Redis had not
    read yet, 1 run in 13 on the direct way. Failed so, every run, while the outcome was
    sent before the ack but its reply not read: ['succeeded', 'succeeded', 'running',
    ...].)"""
    queue = unique_queue()
    uri = _with(amqp_uri, f"relay={relay}")
    with contextlib.ExitStack() as stack:
        state = redis_state
        if way == "late":
            link = SlowLink("127.0.0.1", 6379, delay=0.2, upstream=True)
            stack.callback(link.close)
            state = redis_state.replace(":6379/", f":{link.port}/", 1)
        t = stack.enter_context(open_transport(uri))
        t.state_uri = redis_state
        # Given a worker that runs three tasks back to back, then is killed in the fourth
        _killed_in_the_fourth(t, _DIES_ON_THE_FOURTH, uri, state, queue, result)


def _killed_in_the_fourth(
    t: Any, script: str, uri: str, state: str, queue: str, result: str
) -> None:
    """Run ``script`` (a worker killed in its fourth task) on six tasks; then the broker
    has the fourth back with the two held ahead, and the three acknowledged read
    ``succeeded`` with their results."""
    ids = t.submit_tasks(queue, [{"n": n} for n in range(6)])
    subprocess.run([sys.executable, "-c", script, uri, state, queue, result], timeout=60)
    _eventually(lambda: t.queue_stats(queue).ready == 3, timeout=10)
    found = [t.status(tid) for tid in ids]
    states = [s.state if s is not None else None for s in found]
    assert states[:3] == ["succeeded"] * 3, states
    expected = [0, 1, 2] if result == "value" else [None] * 3
    assert [s.result for s in found[:3] if s is not None] == expected


def _eventually(check: Any, timeout: float = 2.0) -> None:
    """Wait for a write sent without waiting to be read back (another connection)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.005)


_PGSQL_DIES_ON_THE_FOURTH = _DIES_ON_THE_FOURTH.replace(
    "from asynctask_redis import statusfeed", "from asynctask_pgsql import statefeed as statusfeed"
)
assert "asynctask_pgsql" in _PGSQL_DIES_ON_THE_FOURTH


@pytest.mark.parametrize("result", ["value", "none"])
def test_with_state_in_pgsql_a_worker_killed_after_its_successes_leaves_them_succeeded(
    amqp_uri, pgsql_state, result
):
    """The pgsql status feed (``asynctask_pgsql.statefeed``) holds starts and
    outcomes, but a flush before an ack waits for the commit: once the broker forgot a
    task, the store says it succeeded, after a SIGKILL."""
    queue = unique_queue()
    with open_transport(amqp_uri) as t:
        t.state_uri = pgsql_state
        _killed_in_the_fourth(t, _PGSQL_DIES_ON_THE_FOURTH, amqp_uri, pgsql_state, queue, result)


def test_with_state_in_pgsql_the_feed_keeps_the_order_of_states(amqp_uri, pgsql_state):
    """Writes held in one feed batch keep their order: a start, a retry, a second
    start and a success of one task read ``succeeded`` at attempt 2; a task cancelled
    before the feed opened, and one cancelled while it is open, never start; a start
    alone is sent at once (the first after a wait)."""
    queue = unique_queue()
    with open_transport(amqp_uri) as t:
        t.state_uri = pgsql_state
        doomed_before, a, b, doomed_after = t.submit_tasks(queue, [{"n": n} for n in range(4)])
        assert t.cancel(doomed_before)
        store = t.state()
        feed = store.feed(queue)
        assert feed is not None
        try:
            assert not feed.may_start(doomed_before)
            assert feed.may_start(a)
            feed.started(a, 1)  # the first since a wait: sent at once
            assert t.status(a).state == "running"
            feed.settled(a, "retrying", 1, error="boom")
            feed.started(a, 2)
            feed.settled(a, "succeeded", 2, result_json='"ok"')
            assert t.status(a).state == "running"  # held
            feed.flush(waiting=False)
            status = t.status(a)
            assert (status.state, status.attempts, status.result) == ("succeeded", 2, "ok")
            assert status.error == "boom"
            assert t.cancel(doomed_after)
            assert not feed.may_start(doomed_after)
            assert feed.may_start(b)
            feed.started(b, 1)
            feed.settled(b, "failed", 1, error="no")
        finally:
            feed.close()
        assert t.status(b).state == "failed"
        assert t.status(doomed_after).state == "cancelled"


@pytest.mark.parametrize("relay", ["true", "false"])
def test_with_state_in_redis_a_task_cancelled_while_it_runs_logs_its_result_discarded(
    amqp_uri, redis_state, caplog, relay
):
    """The status write of a success whose cancel the consumer's status feed heard says
    so (read without waiting, as a start reads it), and the run loop logs it. Failed
    before: the broker's ack cannot tell, and the feed's write was not asked, no line."""
    with open_transport(_with(amqp_uri, f"relay={relay}")) as t:
        t.state_uri = redis_state
        cancel_while_running_in_process(t, unique_queue(), caplog)


@pytest.mark.parametrize("relay", ["true", "false"])
def test_with_state_in_pgsql_a_task_cancelled_while_it_runs_logs_its_result_discarded(
    amqp_uri, pgsql_state, caplog, relay
):
    """The same with the statuses in pgsql: the pgsql status feed's success answers from
    the cancels it has heard on the queue's channel (``asynctask_pgsql.statefeed``).
    Failed before: its ``settled`` always returned None, and the task read
    ``cancelled`` with no "result discarded" line."""
    with open_transport(_with(amqp_uri, f"relay={relay}")) as t:
        t.state_uri = pgsql_state
        cancel_while_running_in_process(t, unique_queue(), caplog)


def test_with_state_a_purge_streams_the_queue_in_bounded_chunks(amqp_uri, redis_state, monkeypatch):
    """A purge whose statuses live in ``asynctask_state`` must learn the ids it deletes;
    it takes them ``PURGE_CHUNK`` at a time (the broker sends no more unacknowledged),
    acknowledges each chunk in one frame, and has the store forget that chunk's statuses
    before it takes the next: memory bounded by the chunk, not the queue. (Failed
    before: every message of the queue held at once, 175 ids forgotten in one call.)"""
    import amqp

    from asynctask_amqp import ladder
    from asynctask_amqp import transport as amqp_transport

    monkeypatch.setattr(ladder, "PURGE_CHUNK", 50, raising=False)
    limits: list[int] = []  # the prefetch limits set: the most a channel is sent unacked
    real_qos = amqp.Channel.basic_qos

    in_queue_purge = [False]  # only the queue's own purge: the shared ladder's read of
    # delayed tasks (other tests' too, in this vhost) sets no limit, and is not this case
    real_take_ids = ladder.take_ids

    def qos(channel: Any, prefetch_size: int, prefetch_count: int, a_global: bool) -> Any:
        if in_queue_purge[0]:
            limits.append(prefetch_count)
        return real_qos(channel, prefetch_size, prefetch_count, a_global)

    def take_ids(*args: Any, **kwargs: Any) -> int:
        in_queue_purge[0] = True
        try:
            return real_take_ids(*args, **kwargs)
        finally:
            in_queue_purge[0] = False

    monkeypatch.setattr(amqp.Channel, "basic_qos", qos)
    monkeypatch.setattr(amqp_transport, "take_ids", take_ids)
    queue = unique_queue()
    with open_transport(_with(amqp_uri, "relay=false")) as t:
        t.state_uri = redis_state
        ids = t.submit_tasks(queue, [{"n": n} for n in range(175)])
        forgotten: list[int] = []
        real = t._purged_elsewhere

        def counting(queue_name: str, chunk: Any) -> None:
            forgotten.append(len(chunk))
            real(queue_name, chunk)

        monkeypatch.setattr(t, "_purged_elsewhere", counting)
        # When the queue, larger than a chunk, is purged
        assert t.purge(queue) == 175
        # Then it went by chunks of at most 50, every status forgotten
        assert sum(forgotten) == 175 and 0 < max(forgotten) <= 50, forgotten
        assert limits and all(0 < n <= 50 for n in limits), limits  # (0: no limit)
        assert t.queue_stats(queue).ready == 0
        assert all(s is None for s in t.statuses(ids))


#: a worker that fails its task (max_retries = 0) and is SIGKILLed at ``argv[4]``: ``after``
#: its consumer's whole ``fail``; ``before-copy`` (the ``failing`` note written, no copy
#: in Q.failed), ``before-failed`` (the copy published, ``failed`` not written) or
#: ``before-ack`` (``failed`` written, the original not acknowledged): the steps of
#: ``asynctask_amqp.failing``
_KILLED_IN_THE_FAIL = textwrap.dedent(
    """
    import os, signal, sys
    from asynctask import AsyncTaskWorker
    from asynctask.runner import LoopOptions, run_loop
    from asynctask.testing.contract import open_transport
    from asynctask_amqp import consumer, failing, remote

    uri, state, queue, where = sys.argv[1:5]

    def kill():
        os.kill(os.getpid(), signal.SIGKILL)

    def killing(real, before):
        def wrapped(*args, **kwargs):
            if before:
                kill()
            real(*args, **kwargs)
            kill()
        return wrapped

    if where == "after":
        consumer.AmqpConsumer.fail = killing(consumer.AmqpConsumer.fail, False)
        remote.RemoteConsumer.fail = killing(remote.RemoteConsumer.fail, False)
    elif where == "before-copy":
        consumer.AmqpConsumer.copy_to_failed = killing(consumer.AmqpConsumer.copy_to_failed, True)
        remote.RemoteConsumer._copy_to_failed = killing(remote.RemoteConsumer._copy_to_failed, True)
    else:
        failing.write_failed = killing(failing.write_failed, where == "before-failed")

    class Raises(AsyncTaskWorker):
        name = "asynctask_amqp_killed_failing"
        max_retries = 0

        def process(self, payload):
            raise ValueError("boom")

    with open_transport(uri) as t:
        t.state_uri = state
        run_loop(Raises(), t, queue, LoopOptions(halt_when_empty=True))
    """
)

#: the next worker of that queue (max_retries = 1: a redelivery would run), which notes
#: in the file ``argv[4]`` every task it runs
_THE_NEXT_WORKER = textwrap.dedent(
    """
    import sys
    from asynctask import AsyncTaskWorker
    from asynctask.runner import LoopOptions, run_loop
    from asynctask.testing.contract import open_transport

    uri, state, queue, ran = sys.argv[1:5]

    class Notes(AsyncTaskWorker):
        name = "asynctask_amqp_next_worker"
        max_retries = 1

        def process(self, payload):
            with open(ran, "a") as f:
                f.write(str(payload["n"]) + "\\n")

    with open_transport(uri) as t:
        t.state_uri = state
        run_loop(Notes(), t, queue, LoopOptions(halt_when_empty=True))
    """
)


@pytest.mark.parametrize("where", ["after", "before-copy", "before-failed", "before-ack"])
@pytest.mark.parametrize("store", ["redis", "pgsql"])
@pytest.mark.parametrize("relay", ["true", "false"])
def test_a_worker_killed_right_after_it_failed_a_task_leaves_it_failed(
    amqp_uri, request, tmp_path, store, relay, where
):
    """A worker killed at each step of its failure (``asynctask_amqp.failing``), with
    statuses in redis or pgsql, relay or not: once the next worker has met the task
    redelivered, it reads ``failed``, it is in the failed store (twice at most: killed
    between the copy and ``failed``, the bound the README gives) and it never ran again.
    Failed before the order copy, ``failed``, ack (issue 16's AMQP failed window): killed
    ``after`` the fail, the task stayed in Q.failed reading ``running`` for good."""
    state = request.getfixturevalue(f"{store}_state")
    queue = unique_queue()
    uri = _with(amqp_uri, f"relay={relay}")
    ran = tmp_path / "ran"
    with open_transport(uri) as t:
        t.state_uri = state
        tid = t.submit_task(queue, {"n": 1})
        killed = subprocess.run(
            [sys.executable, "-c", _KILLED_IN_THE_FAIL, uri, state, queue, where], timeout=60
        )
        assert killed.returncode == -9
        # the broker has the original back (killed before the ack; with a relay also
        # after the fail: a relay's ack goes with the worker's next call) once the
        # connection closed
        deadline = time.monotonic() + 10
        while True:
            st = t.status(tid)
            assert st is not None
            nexts = subprocess.run(
                [sys.executable, "-c", _THE_NEXT_WORKER, uri, state, queue, str(ran)],
                timeout=60,
            )
            assert nexts.returncode == 0
            st = t.status(tid)
            if (st is not None and st.final) or time.monotonic() > deadline:
                break
        assert st is not None and st.state == "failed", st
        assert not ran.exists(), ran.read_text()  # never run again
        copies = [f.id for f in t.failed_tasks(queue)]
        if where == "before-failed":
            assert copies in ([tid], [tid, tid]), copies
        else:
            assert copies == [tid], copies
        assert t.queue_stats(queue).ready == 0
