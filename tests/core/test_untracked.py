"""A submit learns which queues keep no status through a cache, not a read per submit
(``asynctask.untracked``); the contract (``StatusContract``) checks what it writes."""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator

import pytest

from asynctask.runner import LoopOptions, run_loop
from asynctask.status import StatusNotTracked
from asynctask.testing.contract import open_transport
from asynctask.testing.services import unique_queue
from asynctask.transport import Transport
from asynctask.untracked import UntrackedQueues
from asynctask.validation import Payload
from asynctask.worker import AsyncTaskWorker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Store:
    """Answers ``untracked`` from a set, counting the reads."""

    def __init__(self, untracked: set[str]) -> None:
        self.untracked_queues = untracked
        self.reads: list[set[str]] = []

    def untracked(self, queues: Collection[str]) -> set[str]:
        self.reads.append(set(queues))
        return {q for q in queues if q in self.untracked_queues}


def test_one_read_per_queue_until_the_answer_is_old() -> None:
    # Given a cache re-reading after 5 s, and a store where "a" is untracked
    clock, store = Clock(), Store({"a"})
    cache = UntrackedQueues(recheck=5.0, clock=clock)
    # When it is asked many times within 5 s
    answers = [cache.untracked(q, store.untracked) for q in ("a", "b") * 50]
    # Then the store was read once per queue
    assert answers == [True, False] * 50
    assert store.reads == [{"a"}, {"b"}]
    # When "a" flips and 5 s pass, the next question reads it again
    store.untracked_queues = set()
    clock.now += 4.9
    assert cache.untracked("a", store.untracked) is True  # still the old answer
    clock.now += 0.1
    assert cache.untracked("a", store.untracked) is False
    assert store.reads[-1] == {"a"}


def test_a_note_from_this_process_is_followed_at_once() -> None:
    clock, store = Clock(), Store({"a"})
    cache = UntrackedQueues(clock=clock)
    assert cache.untracked("a", store.untracked) is True
    cache.note("a", tracked=True)
    assert cache.untracked("a", store.untracked) is False
    assert len(store.reads) == 1


def test_the_cache_keeps_a_bounded_number_of_queues() -> None:
    clock, store = Clock(), Store(set())
    cache = UntrackedQueues(clock=clock, size=3)
    for name in ("a", "b", "c"):
        cache.untracked(name, store.untracked)
    clock.now += 10  # "a" is read again: "b" is now the one read longest ago
    for name in ("a", "d"):
        cache.untracked(name, store.untracked)
    assert sorted(cache._known) == ["a", "c", "d"]


def test_a_failed_read_is_not_remembered() -> None:
    cache = UntrackedQueues(clock=Clock())

    def broken(queues: Collection[str]) -> set[str]:
        raise RuntimeError("down")

    with pytest.raises(RuntimeError):
        cache.untracked("a", broken)
    assert cache._known == {}


@pytest.fixture
def transport() -> Iterator[Transport]:
    transport = open_transport("localmem:")
    yield transport
    transport.close()


def test_submits_read_the_store_once_per_queue(transport: Transport) -> None:
    """Fails if a submit reads the store each time (checked with recheck=0: 201 reads)."""
    # Given an untracked queue and a tracked one, the store's reads counted
    store = transport.state()
    quiet, loud = unique_queue("quiet"), unique_queue("loud")
    store.set_tracking(quiet, False)
    reads: list[Collection[str]] = []
    read = store.untracked

    def counted(queues: Collection[str]) -> set[str]:
        reads.append(set(queues))
        return read(queues)

    store.untracked = counted  # type: ignore[method-assign]
    # When 100 tasks go to each, one by one, and a batch to the quiet one
    quiet_ids = [transport.submit_task(quiet, {"n": n}) for n in range(100)]
    loud_ids = [transport.submit_task(loud, {"n": n}) for n in range(100)]
    quiet_ids += transport.submit_tasks(quiet, [{"n": 1}, {"n": 2}])
    # Then the store was read once per queue, and only the tracked queue's tasks have records
    assert reads == [{quiet}, {loud}]
    assert store.statuses(quiet_ids) == [None] * 102
    assert all(s is not None and s.state == "queued" for s in store.statuses(loud_ids))


def test_a_store_that_cannot_answer_means_records_are_written(transport: Transport) -> None:
    """An outage of the read is no reason to lose a record: the submit writes it."""
    from asynctask.errors import TransportUnavailable

    store = transport.state()
    queue = unique_queue("q")
    store.set_tracking(queue, False)

    def down(queues: Collection[str]) -> set[str]:
        raise TransportUnavailable("the store is down")

    store.untracked = down  # type: ignore[method-assign]
    tid = transport.submit_task(queue, {})
    assert store.statuses([tid])[0] is not None


def test_an_unrecorded_id_says_so_and_a_new_one_never_does():
    """The id of a task submitted with no status record carries a mark that ``status``
    reads (DESIGN.md section 6: an untracked queue's task raises ``StatusNotTracked``,
    not "never submitted"); ids of tracked tasks never carry it, whatever the random
    bytes (forced here: the 1-in-2**32 case)."""
    from asynctask import transport as module

    marked = [module.unrecorded_task_id() for _ in range(1000)]
    assert all(len(i) == 32 and int(i, 16) >= 0 and module.is_unrecorded(i) for i in marked)
    assert not any(module.is_unrecorded(module.new_task_id()) for _ in range(5000))
    colliding = bytes(12) + module.UNRECORDED_MARK.to_bytes(4)  # first 4 bytes 0
    real_urandom = module.os.urandom
    module.os.urandom = lambda n: colliding[:n]
    try:
        made = module.new_task_id()
    finally:
        module.os.urandom = real_urandom
    assert len(made) == 32 and not module.is_unrecorded(made)
    assert not module.is_unrecorded("x" * 32) and not module.is_unrecorded("ab")


class _Quiet(AsyncTaskWorker):
    """Succeeds, or fails for good on ``{"fail": true}`` (no retries)."""

    name = "asynctask_untracked_leftover"
    max_retries = 0

    def process(self, payload: Payload) -> None:
        if payload.get("fail"):
            raise RuntimeError("boom")


def test_records_written_before_a_queue_went_untracked_are_forgotten(
    transport: Transport,
) -> None:
    """Issue 16: every status the store keeps is forgotten, the ones written at submit
    before the queue's workers turned ``track_status`` off too. Fails if a worker that
    keeps no status leaves them ``queued`` for ever (before the fix: both records still
    there, ``queued``, long after the TTL)."""
    # Given tasks submitted while the queue was tracked (their records written)
    transport.status_ttl = 0.3
    store = transport.state()
    queue = unique_queue("flipped")
    ok, bad = transport.submit_task(queue, {}), transport.submit_task(queue, {"fail": True})
    keyed = transport.submit_task(queue, {}, unique_key="k")
    ids = [ok, bad, keyed]
    assert [s.state for s in store.statuses(ids) if s is not None] == ["queued"] * 3
    # When its workers now keep no status and run them
    run_loop(_Quiet(), transport, queue, LoopOptions(max_tasks=3, track_status=False))
    assert transport.queue_stats(queue).ready == 0
    # Then status() still says the queue keeps none, the unique key is free again
    with pytest.raises(StatusNotTracked, match="track_status"):
        transport.status(ok)
    assert transport.submit_task(queue, {}, unique_key="k") != keyed
    # And the store keeps nothing for them after the TTL (the raw store: status()
    # refuses a non-final one of an untracked queue, which hid the leak)
    time.sleep(0.5)
    assert store.statuses(ids) == [None, None, None]
