"""The plain one-task submit's own path (``Transport._submit_plain``, localmem's one-task
``_put``): what it may skip, and the promises it keeps that the contract checks only
through other submits (a retried submit stored once)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from asynctask.errors import TransportUnavailable
from asynctask.status import StatusNotTracked
from asynctask.testing.services import unique_queue
from asynctask.transports.localmem import LocalMemTransport
from asynctask.validation import Payload


@pytest.fixture
def transport() -> Iterator[LocalMemTransport]:
    made = LocalMemTransport("localmem:")
    yield made
    made.close()


@pytest.mark.parametrize("tracked", [True, False], ids=["tracked", "untracked"])
def test_a_plain_submit_retried_after_a_lost_reply_is_stored_once(
    transport: LocalMemTransport, tracked: bool
) -> None:
    """The first try of a plain one-task submit is stored, its reply lost (an error
    instead), and before ``_call`` tries it again another thread submits plain tasks
    too. The retry must store nothing: the guard is this thread's last put, not the
    transport's (fails with one last-put id shared by every thread: 3 tasks, not 2)."""
    # Given a queue, tracked or not, and a put whose first try's reply is lost
    queue = unique_queue()
    transport.state().set_tracking(queue, tracked)
    primitive = transport._put
    tries: list[str] = []

    def reply_lost(queue: str, tasks: Any, delay: float, options: Any) -> Any:
        stored = primitive(queue, tasks, delay, options)
        tries.append(tasks[0][0])
        if len(tries) == 1:
            # meanwhile another thread's plain submit goes through the same transport
            other = threading.Thread(target=primitive, args=(queue, [("other", "{}")], 0, options))
            other.start()
            other.join()
            raise TransportUnavailable("the reply was lost (a test)")
        return stored

    transport._put = reply_lost  # type: ignore[method-assign]
    try:
        # When a plain submit is made
        task_id = transport.submit_task(queue, {"n": 1})
    finally:
        del transport._put
    # Then it was tried twice with one id, and stored once (beside the other thread's)
    assert tries == [task_id, task_id]
    assert transport.stored(queue) == 2
    if tracked:  # its status record written once too, as any plain submit's
        status = transport.status(task_id)
        assert status is not None and status.state == "queued"
    else:
        with pytest.raises(StatusNotTracked):
            transport.status(task_id)
    assert [transport.get_task(queue) for _ in range(3)] == [{"n": 1}, {}, None]


def test_a_plain_submit_whose_first_try_stored_nothing_is_stored_by_its_retry(
    transport: LocalMemTransport,
) -> None:
    """A first try that fails inside the put before the task is stored (here: writing
    its status record) leaves no guard behind: the retry stores the task. Fails with
    the guard noted before the task is stored (nothing stored, the id returned)."""
    # Given a tracked queue whose status record cannot be written once
    queue = unique_queue()
    store = transport._statuses
    record = store.queued_held
    tries: list[str] = []

    def away_once(queue: str, task_id: str, now: float) -> None:
        tries.append(task_id)
        if len(tries) == 1:
            raise TransportUnavailable("away (a test)")
        record(queue, task_id, now)

    store.queued_held = away_once  # type: ignore[method-assign]
    try:
        # When a plain submit is made
        task_id = transport.submit_task(queue, {"n": 1})
    finally:
        del store.queued_held
    # Then its retry stored it, once
    assert tries == [task_id, task_id]
    assert transport.stored(queue) == 1
    assert transport.get_task(queue) == {"n": 1}


class _CountingTransport(LocalMemTransport):
    """A subclass that sees every submit through ``submit_tasks``."""

    schemes = ()

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self.calls = 0

    def submit_tasks(
        self, queue_name: str, payloads: Iterable[Payload | None], **options: Any
    ) -> list[str]:
        self.calls += 1
        return super().submit_tasks(queue_name, payloads, **options)


def test_a_subclass_overriding_submit_tasks_sees_every_plain_submit() -> None:
    """``submit_task`` skips ``submit_tasks`` for a plain submit only where the class
    did not override it (fails when the plain path is taken regardless: 0 calls)."""
    transport = _CountingTransport("localmem:")
    try:
        transport.submit_task(unique_queue(), {"n": 1})
        assert transport.calls == 1
    finally:
        transport.close()
