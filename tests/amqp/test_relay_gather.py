"""A relay gathers a busy worker's status writes and the acks after them
(``Relay._gather``): one store call and one ``basic.ack`` for several tasks, made after
what the worker waits for (a reserve's answer), never dropped when the worker goes.

The relay runs in a thread of the test, on one end of a socketpair, with a consumer and
a status feed that record what the relay asks of them (no broker, no store): what is
counted is the relay's own choice of when to write and acknowledge.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import termios
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from asynctask.transport import Delivery
from asynctask_amqp import relay as relay_module
from asynctask_amqp.relay import Relay
from asynctask_amqp.wire import Reader, SharedWords, send


class RecordingConsumer:
    """What the relay calls on its ``AmqpConsumer``, recorded; ``ready`` tasks handed
    over by the first reserve."""

    queue = "gathered"
    window = None

    def __init__(self, prefetch: int) -> None:
        self.prefetch = prefetch
        self.acked: list[list[str]] = []
        self.abandoned: list[Delivery] = []

    def delivering_socket(self) -> None:
        return None

    def has_frame(self) -> bool:
        return False

    def take(self, most: int) -> list[Delivery]:
        return []

    def adapt(self, unstarted: Any = ()) -> bool:
        return False

    def reserve(self, timeout: float) -> None:
        time.sleep(min(timeout, 0.01))

    def ack_many(self, deliveries: list[Delivery]) -> None:
        self.acked.append([d.id for d in deliveries])

    def abandon(self, unstarted: Any = ()) -> None:
        self.abandoned = list(unstarted)

    def close(self) -> None:
        pass


class RecordingFeed:
    """The relay's status feed: each ``flush`` is one store call; ``open`` cleared, a
    flush waits for it (a store that is slow to answer)."""

    relayable = True

    def __init__(self) -> None:
        self.made: list[tuple[str, ...]] = []
        self.flushes: list[list[tuple[str, ...]]] = []
        self.open = threading.Event()
        self.open.set()

    def started(self, task_id: str, attempt: int, began: float | None = None) -> None:
        self.made.append(("running", task_id))

    def settled(self, task_id: str, state: str, attempts: int, **_: Any) -> None:
        self.made.append((state, task_id))

    def flush(self, *, waiting: bool = True) -> None:
        self.open.wait(10)
        self.flushes.append(self.made)
        self.made = []


def _delivery(n: int) -> Delivery:
    return Delivery(
        id=f"t{n}",
        queue="gathered",
        payload={},
        attempt=1,
        submitted_at=0.0,
        receipt=(1, n, SimpleNamespace(headers={})),
        headers={},
    )


class Worker:
    """The worker's end of the socket, with the relay serving the other in a thread."""

    def __init__(self, tasks: int, prefetch: int = 32) -> None:
        ours, theirs = socket.socketpair()
        self.sock, self.theirs = ours, theirs
        self.reader = Reader(ours, trusted=True)  # (the relay answers in marshal)
        self.words = SharedWords(SharedWords.new_file())
        self.words.generation = 1
        self.consumer = RecordingConsumer(prefetch)
        self.feed = RecordingFeed()
        self.relay = Relay(Reader(theirs), self.consumer, 0, self.words)  # type: ignore[arg-type]
        self.relay.worker = os.getppid()  # (its parent check: the relay's "parent")
        self.relay._state = (None, self.feed)  # type: ignore[assignment]
        self.relay.ready = [_delivery(n) for n in range(1, tasks + 1)]
        self.thread = threading.Thread(target=self.relay.serve, daemon=True)
        self.thread.start()

    def reserve(self) -> list[dict[str, Any]]:
        send(self.sock, {"op": "reserve", "timeout": 0.0})
        answer = self.reader.receive()
        assert answer is not None
        return list(answer["deliveries"])

    def settled(self, n: int, *, read: bool = True) -> None:
        """Task ``n``'s start and success and its ack, as one frame; with ``read``,
        return once the relay has read it (each frame alone, as a slow worker's)."""
        now = time.monotonic()
        writes = [["s", f"t{n}", 1, now], ["o", f"t{n}", "succeeded", 1, "", ""]]
        send(self.sock, {"op": "settled", "writes": writes, "acks": [n]})
        while read and _unread(self.theirs):
            time.sleep(0.001)
        time.sleep(0.01 if read else 0)

    def close(self) -> None:
        self.feed.open.set()
        self.sock.close()
        self.thread.join(10)
        self.theirs.close()
        self.words.close()


def _unread(sock: socket.socket) -> int:
    """Bytes waiting in ``sock`` (``SIOCINQ``)."""
    got = fcntl.ioctl(sock.fileno(), termios.FIONREAD, struct.pack("i", 0))
    return int(struct.unpack("i", got)[0])


@pytest.fixture
def worker() -> Iterator[Worker]:
    w = Worker(tasks=8)
    try:
        yield w
    finally:
        w.close()


def test_a_busy_workers_frames_are_written_and_acknowledged_together(worker, monkeypatch):
    """Given a worker settling its 8 tasks one frame at a time, each read by the relay
    before the next is sent, when the 8th arrives (a quarter of the prefetch of 32),
    then the relay has made one store call for the 8 tasks, then one ack of the 8.
    (Failed before: 8 store calls and 8 acks, one a frame.)"""
    # (the count decides here)
    monkeypatch.setattr(relay_module, "GATHER_SECONDS", 10.0, raising=False)
    assert len(worker.reserve()) == 8
    for n in range(1, 9):
        worker.settled(n)
    deadline = time.monotonic() + 5
    while not worker.consumer.acked and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(worker.feed.flushes) == 1, worker.feed.flushes
    assert [s for s, _ in worker.feed.flushes[0]] == ["running", "succeeded"] * 8
    assert worker.consumer.acked == [[f"t{n}" for n in range(1, 9)]]


def test_gathered_writes_go_within_the_gather_time_when_no_more_come(worker):
    """Given one settled frame and nothing after it, the relay writes and acknowledges
    it within a few gather times, not at the next frame."""
    worker.reserve()
    worker.settled(1)
    deadline = time.monotonic() + 1
    while not worker.consumer.acked and time.monotonic() < deadline:
        time.sleep(0.001)
    assert worker.consumer.acked == [["t1"]]
    assert len(worker.feed.flushes) == 1


def test_a_reserve_is_answered_before_the_gathered_writes_are_made(monkeypatch):
    """Given a store slow to answer and a task's writes gathered, when the worker asks
    for more tasks, the relay hands over what is ready first, then writes, then acks.
    (Failed before: the answer waited for the store.)"""
    monkeypatch.setattr(relay_module, "GATHER_SECONDS", 10.0, raising=False)
    w = Worker(tasks=3)
    try:
        w.relay.ready = w.relay.ready[:1]
        assert len(w.reserve()) == 1
        w.relay.ready = [_delivery(2), _delivery(3)]
        w.feed.open.clear()  # the store does not answer
        w.settled(1)
        began = time.monotonic()
        assert [d["id"] for d in w.reserve()] == ["t2", "t3"]
        assert time.monotonic() - began < 1.0
        assert w.consumer.acked == []  # the writes are not answered yet: no ack
        w.feed.open.set()
        deadline = time.monotonic() + 5
        while not w.consumer.acked and time.monotonic() < deadline:
            time.sleep(0.005)
        assert w.consumer.acked == [["t1"]]
        assert [s for s, _ in w.feed.flushes[0]] == ["running", "succeeded"]
    finally:
        w.close()


def test_a_worker_gone_leaves_its_gathered_writes_made_and_acknowledged(worker, monkeypatch):
    """Given three tasks' writes and acks gathered, when the worker's socket closes
    (killed right after its frames), the relay writes them, then acknowledges them,
    then gives back only what the worker never took."""
    monkeypatch.setattr(relay_module, "GATHER_SECONDS", 10.0, raising=False)
    worker.reserve()
    worker.words.taken = 3
    for n in (1, 2, 3):
        worker.settled(n, read=False)
    worker.sock.close()
    worker.thread.join(5)
    assert not worker.thread.is_alive()
    assert [t for _, t in worker.feed.flushes[0]] == ["t1", "t1", "t2", "t2", "t3", "t3"]
    assert worker.consumer.acked == [["t1", "t2", "t3"]]
    assert sorted(d.id for d in worker.consumer.abandoned) == [f"t{n}" for n in range(4, 9)]
