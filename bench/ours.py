"""Our side of each measure: the Transport API, and ``asynctask workers`` as users run it.

Drains and latencies run the real command (a supervisor and its child processes) with the
``bench_noop`` worker, which notes when each ``process()`` starts in a ledger; the
harness reads the ledger afterwards, so watching costs the workers nothing. ``localmem``
lives in one process, so its workers are threads running the same run loop.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from asynctask.plugins import DISABLE_VARIABLE
from asynctask.runner import LoopOptions, run_loop
from asynctask.testing import clean_environment, workers_command
from asynctask.transport import Transport
from bench import ledger
from bench.plan import plugins_off
from bench.workers import BenchNoopWorker

ROOT = Path(__file__).resolve().parent.parent
Payload = dict[str, Any]


@dataclass(frozen=True)
class Drain:
    """How a drain went: start-up apart from the rate once tasks flow."""

    #: seconds from launching the command to the first task's ``process()``
    startup: float
    #: tasks per second from the first task's start to the last's
    rate: float
    #: tasks started (fewer than asked when the drain ran out of time)
    done: int
    #: seconds from launching the command to the last task's ``process()``
    total: float


def payloads(count: int, sent: float = 0.0, pad: int = 0) -> list[Payload]:
    """``count`` small payloads, numbered: ``{"n": i, "sent": sent}``; ``pad`` more bytes
    in a ``"pad"`` string (the realistic 1 KB payload)."""
    if pad:
        return [{"n": n, "sent": sent, "pad": "x" * pad} for n in range(count)]
    return [{"n": n, "sent": sent} for n in range(count)]


def submit_one(transport: Transport, queue: str, items: Sequence[Payload]) -> None:
    """Submit each payload with its own call."""
    submit = transport.submit_task
    for payload in items:
        submit(queue, payload)


def submit_batch(transport: Transport, queue: str, items: Sequence[Payload], batch: int) -> None:
    """Submit payloads ``batch`` per ``submit_tasks`` call."""
    for i in range(0, len(items), batch):
        transport.submit_tasks(queue, items[i : i + batch])


def rate(
    send: Callable[[Sequence[Payload]], object],
    count: int,
    chunk: int,
    budget: float,
    pad: int = 0,
) -> float:
    """Tasks per second of ``send`` over ``count`` payloads, ``chunk`` per call.

    Stops early once ``budget`` seconds are spent, so that a backend that fsyncs every
    task (about 150/s on this disk) does not hold the run for minutes.
    """
    items = payloads(count, pad=pad)
    done = 0
    start = time.perf_counter()
    while done < count:
        part = items[done : done + chunk]
        send(part)
        done += len(part)
        if time.perf_counter() - start > budget:
            break
    return done / (time.perf_counter() - start)


def interleaved(
    mine: Callable[[Sequence[Payload]], object],
    theirs: Callable[[Sequence[Payload]], object],
    count: int,
    chunk: int,
    budget: float,
) -> tuple[float, float]:
    """Tasks per second of each side over ``count`` payloads each, ``chunk`` per call,
    the two taking turns chunk by chunk (ABBA: who goes first alternates), until both
    are done or ``budget`` seconds are spent in all; each rate from its summed time.

    One-by-one submits wait for a commit's fsync, whose latency on a shared disk moves
    by several times within seconds: rounds of seconds compared one side's calm with
    the other's storm (0.5x to 1.5x from run to run on the same code); chunks of tens
    of milliseconds meet the same disk.
    """
    items = payloads(count)
    spent = [0.0, 0.0]
    done = 0
    sides = (mine, theirs)
    began = time.perf_counter()
    while done < count and time.perf_counter() - began < budget:
        part = items[done : done + chunk]
        order = (0, 1) if (done // chunk) % 2 == 0 else (1, 0)
        for side in order:
            start = time.perf_counter()
            sides[side](part)
            spent[side] += time.perf_counter() - start
        done += len(part)
    return done / spent[0], done / spent[1]


def fill(transport: Transport, queue: str, count: int, batch: int = 1000, pad: int = 0) -> None:
    """Put ``count`` tasks in a queue before a drain (not timed)."""
    items = payloads(count, pad=pad)
    for i in range(0, count, batch):
        transport.submit_tasks(queue, items[i : i + batch])


def send_spaced(send: Callable[[Payload], object], count: int, gap: float) -> None:
    """Send ``count`` payloads ``gap`` seconds apart, each stamped with its send time."""
    begin = time.monotonic()
    for n in range(count):
        pause = begin + n * gap - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        send({"n": n, "sent": time.time()})


def latencies(path: str, skip: int) -> list[float]:
    """Milliseconds from send to ``process()`` start of each ledger line after ``skip``."""
    return [(e.started - e.sent) * 1000 for e in ledger.read(path)[skip:]]


def drain_rate(path: str, launched: float) -> Drain:
    """The drain a ledger shows for a command launched at ``launched`` (``time.time()``)."""
    starts = sorted(e.started for e in ledger.read(path))
    if len(starts) < 2:
        raise RuntimeError(f"only {len(starts)} task(s) ran")
    rate = (len(starts) - 1) / (starts[-1] - starts[0])
    return Drain(starts[0] - launched, rate, len(starts), starts[-1] - launched)


def consume(
    transport: Transport,
    queue: str,
    rounds: list[Callable[[], int]],
    prefetch: int = 1,
    track_status: bool | None = None,
) -> float:
    """Tasks per second of one consumer's reserve+ack, over rounds (each fills, untimed).

    Each round's callable fills the queue and returns how many to take.
    ``track_status`` False: the consumer writes no status, as a run loop's with
    ``track_status = False`` (None: it writes them, the default).
    """
    taken, elapsed = 0, 0.0
    with transport.consumer(queue, prefetch=prefetch) as consumer:
        if track_status is not None:
            consumer.tracking = track_status
        for fill_round in rounds:
            count = fill_round()
            start = time.perf_counter()
            for _ in range(count):
                delivery = consumer.reserve(timeout=10.0)
                if delivery is None:
                    raise RuntimeError(f"reserve found nothing after {taken} tasks")
                consumer.ack(delivery)
            elapsed += time.perf_counter() - start
            taken += count
    return taken / elapsed


# -- the workers command ---------------------------------------------------------------


class WorkersCommand:
    """``asynctask workers`` with ``bench_noop`` on one queue, its log in ``folder``."""

    def __init__(
        self,
        uri: str,
        queue: str,
        concurrency: int,
        ledger_path: str,
        folder: Path,
        halt: bool,
        worker: str = "bench_noop",
        child_concurrency: int | None = None,
        track_status: bool | None = None,
        more_queues: Sequence[str] = (),
        state_uri: str | None = None,
        prefetch: int | None = None,
    ) -> None:
        entry: dict[str, Any] = {"worker": worker, "concurrency": concurrency}
        if prefetch is not None:
            entry["prefetch"] = prefetch
        if child_concurrency is not None:
            entry["child_concurrency"] = child_concurrency
        if track_status is not None:
            entry["track_status"] = track_status
        workers = {name: entry for name in (queue, *more_queues)}
        halting = ["--halt-when-empty"] if halt else []
        settings = {} if state_uri is None else {"asynctask_state": state_uri}
        self.command = workers_command(
            uri, workers, "--import", "bench.workers", "-q", *halting, settings=settings
        )
        self.env = clean_environment(
            **{ledger.LEDGER_VARIABLE: ledger_path, DISABLE_VARIABLE: plugins_off()}
        )
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
        )
        self.folder = folder
        self.log = folder / f"workers-{queue}-{concurrency}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.launched = 0.0

    def __enter__(self) -> WorkersCommand:
        with open(self.log, "wb") as log:
            self.launched = time.time()
            self.process = subprocess.Popen(
                self.command, cwd=self.folder, env=self.env, stdout=log, stderr=log
            )
        return self

    def alive(self) -> bool:
        """Whether the command is still running."""
        return self.process is not None and self.process.poll() is None

    def wait(self, timeout: float) -> int:
        """Wait for the command to exit; its exit code. Raises ``TimeoutError``."""
        assert self.process is not None
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(f"asynctask workers still running after {timeout:g} s") from exc
        if code != 0:
            raise RuntimeError(f"asynctask workers exited {code}: {self.last_line()}")
        return code

    def stop(self) -> None:
        """SIGTERM: children finish their task and stop."""
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)

    def last_line(self) -> str:
        """The last line of the command's log (the error, when it failed)."""
        lines = self.log.read_text(errors="replace").strip().splitlines()
        return (lines[-1] if lines else "no output") + f" (log: {self.log})"

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.alive():
            assert self.process is not None
            self.process.kill()  # its children die with it (PR_SET_PDEATHSIG)
            self.process.wait()


def drain(
    uri: str,
    queue: str,
    count: int,
    concurrency: int,
    folder: Path,
    track_status: bool | None = None,
    state_uri: str | None = None,
    prefetch: int | None = None,
) -> Drain:
    """Run ``asynctask workers --halt-when-empty`` on a filled queue until it exits
    (``state_uri``: its statuses kept there, the setting ``asynctask_state``;
    ``prefetch``, None: the worker's, goes in the queue's entry)."""
    path = ledger.fresh(str(folder / f"drain-{queue}-{concurrency}.ledger"))
    with WorkersCommand(
        uri,
        queue,
        concurrency,
        path,
        folder,
        halt=True,
        track_status=track_status,
        state_uri=state_uri,
        prefetch=prefetch,
    ) as workers:
        try:
            workers.wait(timeout=max(120.0, count / 50))
        except TimeoutError:
            workers.stop()  # report the rate of what was done
    return drain_rate(path, workers.launched)


def drain_queues(uri: str, queues: Sequence[str], count: int, folder: Path) -> Drain:
    """One ``asynctask workers`` serving every queue (one child each) until all are empty."""
    path = ledger.fresh(str(folder / f"queues-{queues[0]}.ledger"))
    with WorkersCommand(
        uri, queues[0], 1, path, folder, halt=True, more_queues=queues[1:]
    ) as workers:
        try:
            workers.wait(timeout=max(180.0, count / 50))
        except TimeoutError:
            workers.stop()
    return drain_rate(path, workers.launched)


def worker_memory(uri: str, queue: str, count: int, folder: Path) -> float:
    """The peak resident bytes of an ``asynctask workers`` child once it started ``count``
    tasks of a filled queue (it is stopped then: the rest stay)."""
    from bench.memory import rss

    path = ledger.fresh(str(folder / f"memory-{queue}.ledger"))
    follower = ledger.Follower(path)
    with WorkersCommand(uri, queue, 1, path, folder, halt=False) as workers:
        follower.wait(count, max(120.0, count / 20), workers.alive)
        peak = max(rss(pid) for pid in {e.pid for e in ledger.read(path)})
        workers.stop()
    return peak


def drain_io(uri: str, queue: str, count: int, child_concurrency: int, folder: Path) -> Drain:
    """One child of ``bench_sleep`` (``await asyncio.sleep``) on a filled queue."""
    path = ledger.fresh(str(folder / f"io-{queue}-{child_concurrency}.ledger"))
    with WorkersCommand(
        uri, queue, 1, path, folder, halt=True, worker="bench_sleep",
        child_concurrency=child_concurrency,
    ) as workers:  # fmt: skip
        try:
            workers.wait(timeout=max(120.0, count / 50))
        except TimeoutError:
            workers.stop()
    return drain_rate(path, workers.launched)


def arq_io(python: Path, redis_url: str, concurrency: int, count: int, sleep: float) -> float:
    """arq's rate on the same I/O-bound tasks, run by the bench-only venv's ``python``."""
    script = ROOT / "bench" / "arq_peer.py"
    done = subprocess.run(
        [str(python), str(script), redis_url, str(concurrency), str(count), str(sleep)],
        capture_output=True,
        text=True,
        timeout=max(120.0, count / 50),
        check=True,
    )
    rate: float = json.loads(done.stdout.strip().splitlines()[-1])["rate"]
    return rate


def latency(
    uri: str,
    transport: Transport,
    queue: str,
    count: int,
    gap: float,
    folder: Path,
    track_status: bool | None = None,
) -> list[float]:
    """Send-to-start milliseconds on an idle ``asynctask workers`` with one child."""
    path = ledger.fresh(str(folder / f"latency-{queue}.ledger"))
    follower = ledger.Follower(path)
    with WorkersCommand(
        uri, queue, 1, path, folder, halt=False, track_status=track_status
    ) as workers:
        # Warm up: the first task waits for the child to start; it is not counted.
        transport.submit_task(queue, {"n": -1, "sent": time.time()})
        follower.wait(1, 60, workers.alive)
        send_spaced(lambda payload: transport.submit_task(queue, payload), count, gap)
        follower.wait(1 + count, 60, workers.alive)
        workers.stop()
    return latencies(path, 1)


# -- localmem: the run loop in threads -------------------------------------------------


@contextmanager
def _threads(
    transport: Transport,
    queue: str,
    count: int,
    ledger_path: str,
    halt: bool,
    track_status: bool | None = None,
) -> Iterator[threading.Event]:
    """Run loops in threads; leaving waits for them (halting ones stop when drained)."""
    os.environ[ledger.LEDGER_VARIABLE] = ledger_path
    stop = threading.Event()

    def run() -> None:
        worker = BenchNoopWorker()
        worker.setup()
        try:
            options = LoopOptions(
                halt_when_empty=halt,
                stop=stop,
                prefetch=worker.prefetch or transport.default_prefetch,
                track_status=track_status,
            )
            run_loop(worker, transport, queue, options)
        finally:
            worker.teardown()

    threads = [threading.Thread(target=run, name=f"bench-{i}") for i in range(count)]
    try:
        for thread in threads:
            thread.start()
        yield stop
    except BaseException:
        stop.set()
        raise
    finally:
        if not halt:
            stop.set()
        for thread in threads:
            thread.join()
        del os.environ[ledger.LEDGER_VARIABLE]


def drain_in_process(
    transport: Transport,
    queue: str,
    threads: int,
    folder: Path,
    track_status: bool | None = None,
) -> Drain:
    """Drain with ``threads`` run loops in this process (for ``localmem``)."""
    path = ledger.fresh(str(folder / f"drain-{queue}-{threads}.ledger"))
    launched = time.time()
    with _threads(transport, queue, threads, path, halt=True, track_status=track_status):
        pass  # the threads halt when the queue is drained; leaving joins them
    return drain_rate(path, launched)


def latency_in_process(
    transport: Transport,
    queue: str,
    count: int,
    gap: float,
    folder: Path,
    track_status: bool | None = None,
) -> list[float]:
    """Send-to-start milliseconds on an idle run loop in a thread (for ``localmem``)."""
    path = ledger.fresh(str(folder / f"latency-{queue}.ledger"))
    follower = ledger.Follower(path)
    with _threads(transport, queue, 1, path, halt=False, track_status=track_status):
        transport.submit_task(queue, {"n": -1, "sent": time.time()})
        follower.wait(1, 60)
        send_spaced(lambda payload: transport.submit_task(queue, payload), count, gap)
        follower.wait(1 + count, 60)
    return latencies(path, 1)


def _wait_and_note(waiter: Transport, task_id: str, woke: list[float]) -> None:
    waiter.wait(task_id, timeout=30)
    woke.append(time.perf_counter())


def wait_wakeups(transport: Transport, waiter: Transport, queue: str, count: int) -> list[float]:
    """Milliseconds from a task's ``ack`` to the return of a ``wait`` blocked on it.

    ``waiter`` (another transport object: another connection) waits in a thread; this
    thread takes the task through a new consumer and acknowledges it, closing the
    consumer at once (a transport may send the ack with the consumer's next call).
    """
    found: list[float] = []
    for n in range(count):
        task_id = transport.submit_task(queue, {"n": n})
        woke: list[float] = []
        thread = threading.Thread(target=_wait_and_note, args=(waiter, task_id, woke))
        thread.start()
        time.sleep(0.05)  # blocked by now
        consumer = transport.consumer(queue)
        delivery = consumer.reserve(timeout=10)
        if delivery is None or consumer.start(delivery) != "run":
            raise RuntimeError(f"task {task_id} did not come to be acknowledged")
        began = time.perf_counter()
        consumer.ack(delivery)
        store = transport.external_state()
        if store is not None:  # as the run loop does: the outcome goes to that store
            store.settled(queue, task_id, "succeeded", delivery.attempt)
        consumer.close()
        thread.join(30)
        if not woke:
            raise RuntimeError(f"wait({task_id}) did not return")
        found.append((woke[0] - began) * 1000)
    return found
