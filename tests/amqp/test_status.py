"""Task statuses on AMQP (DESIGN.md section 6): priorities through ``max_priority``, and
everything else through the store named by ``asynctask_state`` (here a filesys folder).

The shared ``StatusContract`` (tests/amqp/test_contract.py) runs the full stories; these
pin what is particular to AMQP: the errors without the settings, the queue argument,
and the relay, whose ``start`` runs in the worker's process.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from asynctask.errors import InvalidTaskError
from asynctask.status import StatusNotKept
from asynctask.testing import unique_queue
from asynctask.testing.contract import open_transport


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
