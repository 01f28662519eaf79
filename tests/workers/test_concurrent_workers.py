"""Async and threaded workers in real ``asynctask workers`` children, on every transport.

One child runs many tasks at once (``child_concurrency``); each task is still settled on
its own, comes back when its child dies, and times out alone.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

from asynctask import get_transport
from support import events, wait_for


def _payloads(ledger, n, **extra):
    return [{"ledger": str(ledger), "n": i, **extra} for i in range(n)]


def test_an_async_process_that_raises_ends_in_the_failed_store(
    backend_uri, queue, ledger, start_workers
):
    # Given an async def process that raises (once, this was acknowledged unawaited)
    transport = get_transport(backend_uri)
    transport.submit_task(queue, {"ledger": str(ledger), "n": 1})
    workers = start_workers(backend_uri, {queue: "test_async_raise"}, "--halt-when-empty")
    # Then the coroutine ran and its error is in the failed store
    assert workers.wait(90) == 0, workers.output()
    assert len(events(ledger, "start")) == 1
    [failed] = transport.failed_tasks(queue)
    assert "async failing on purpose: 1" in failed.error


def test_one_child_runs_50_coroutines_at_once_each_exactly_once(
    backend_uri, queue, ledger, start_workers
):
    # Given 50 tasks that each await asyncio.sleep(1), and one child of concurrency 50
    transport = get_transport(backend_uri)
    transport.submit_tasks(queue, _payloads(ledger, 50))
    workers = start_workers(backend_uri, {queue: "test_async_sleep"}, "--halt-when-empty")
    assert workers.wait(90) == 0, workers.output()
    # Then the 50th started before the first ended, in one process, and each ran once
    starts, dones = events(ledger, "start"), events(ledger, "done")
    assert len({e["pid"] for e in starts}) == 1
    assert max(e["time"] for e in starts) < min(e["time"] for e in dones)
    assert Counter(e["payload"]["n"] for e in dones) == Counter(range(50))
    assert len(starts) == 50
    stats = transport.queue_stats(queue)
    assert (stats.ready, stats.in_flight or 0, stats.failed or 0) == (0, 0, 0)


def test_sigkill_of_a_child_holding_50_coroutines_loses_none(
    backend_uri, queue, ledger, start_workers
):
    # Given one child running 50 tasks of 3 s at once
    transport = get_transport(backend_uri)
    transport.submit_tasks(queue, _payloads(ledger, 50, seconds=3))
    workers = start_workers(backend_uri, {queue: "test_async_sleep"}, "--halt-when-empty")
    wait_for(lambda: len(events(ledger, "start")) >= 50, 60, "50 tasks to start")
    # When the child is SIGKILLed with all 50 in flight
    [child] = workers.children()
    os.kill(child, signal.SIGKILL)
    # Then all 50 come back, run in a new child and finish
    assert workers.wait(120) == 0, workers.output()
    done = events(ledger, "done")
    assert {e["payload"]["n"] for e in done} == set(range(50))
    assert all(e["pid"] != child for e in done)
    assert transport.failed_tasks(queue) == []


MIX = (["ok"] * 10) + ["raise", "timeout", "ignore"]


def _check_mix(transport, queue, ledger, kinds):
    by_n = {n: kind for n, kind in enumerate(kinds)}
    starts = Counter(e["payload"]["n"] for e in events(ledger, "start"))
    done = Counter(e["payload"]["n"] for e in events(ledger, "done"))
    for n, kind in by_n.items():
        if kind == "ok":
            # the ok ones ended once each, however their neighbours ended
            assert (starts[n], done[n]) == (1, 1), (n, kind, starts[n], done[n])
        else:
            # the others spent both attempts (max_retries 1), never finished
            assert (starts[n], done[n]) == (2, 0), (n, kind, starts[n], done[n])
    failed = {f.payload["n"]: f.error for f in transport.failed_tasks(queue)}
    assert sorted(failed) == [n for n, kind in by_n.items() if kind != "ok"]
    for n, error in failed.items():
        if by_n[n] == "raise":
            assert f"failing on purpose: {n}" in error
        else:
            assert "timeout of 1 s" in error, error
    stats = transport.queue_stats(queue)
    assert (stats.ready, stats.in_flight or 0) == (0, 0)


def test_async_mix_each_ends_where_it_should(backend_uri, queue, ledger, start_workers):
    # Given succeeding, raising, timing-out and cancellation-ignoring coroutines in one child
    transport = get_transport(backend_uri)
    payloads = [{"ledger": str(ledger), "n": n, "kind": k} for n, k in enumerate(MIX)]
    transport.submit_tasks(queue, payloads)
    workers = start_workers(
        backend_uri, {queue: "test_async_mix"}, "--halt-when-empty", "--grace", "3"
    )
    assert workers.wait(120) == 0, workers.output()
    # Then each ends where it should and the others are unaffected
    _check_mix(transport, queue, ledger, MIX)
    # the timed-out coroutines saw CancelledError; the ignoring one had its child replaced
    cancelled = Counter(e["payload"]["kind"] for e in events(ledger, "cancelled"))
    assert cancelled == {"timeout": 2, "ignore": 2}
    assert "ignored its cancellation" in workers.output()


THREAD_MIX = (["ok"] * 6) + ["raise", "timeout"]


def test_threaded_mix_each_ends_where_it_should(backend_uri, queue, ledger, start_workers):
    # Given succeeding, raising and timing-out tasks of a sync worker in 8 threads
    transport = get_transport(backend_uri)
    payloads = [{"ledger": str(ledger), "n": n, "kind": k} for n, k in enumerate(THREAD_MIX)]
    transport.submit_tasks(queue, payloads)
    workers = start_workers(
        backend_uri, {queue: "test_thread_mix"}, "--halt-when-empty", "--grace", "3"
    )
    assert workers.wait(120) == 0, workers.output()
    # Then each ends where it should; the thread past its timeout had its child replaced
    _check_mix(transport, queue, ledger, THREAD_MIX)
    assert len({e["pid"] for e in events(ledger, "start")}) >= 2


def test_threaded_sync_worker_runs_50_at_once(backend_uri, queue, ledger, start_workers):
    # Given 50 tasks that each sleep 1 s in a sync worker of 50 threads
    transport = get_transport(backend_uri)
    transport.submit_tasks(queue, _payloads(ledger, 50))
    workers = start_workers(backend_uri, {queue: "test_thread_sleep"}, "--halt-when-empty")
    assert workers.wait(90) == 0, workers.output()
    starts, dones = events(ledger, "start"), events(ledger, "done")
    assert max(e["time"] for e in starts) < min(e["time"] for e in dones)
    assert Counter(e["payload"]["n"] for e in dones) == Counter(range(50))


def test_sys_exit_in_task_code_reaches_the_failed_store(backend_uri, queue, ledger, start_workers):
    # Given a task whose code calls sys.exit(3) (max_retries 1)
    transport = get_transport(backend_uri)
    transport.submit_task(queue, {"ledger": str(ledger), "n": 1})
    workers = start_workers(backend_uri, {queue: "test_sys_exit"}, "--halt-when-empty")
    # Then both attempts count, and it ends in the failed store (not an empty queue)
    assert workers.wait(90) == 0, workers.output()
    assert len(events(ledger, "start")) == 2
    [failed] = transport.failed_tasks(queue)
    assert "SystemExit: 3" in failed.error


def test_child_concurrency_from_the_queue_entry(backend_uri, queue, ledger, start_workers):
    # Given the queue entry sets child_concurrency 5 for the 50-slot async worker
    transport = get_transport(backend_uri)
    transport.submit_tasks(queue, _payloads(ledger, 10, seconds=0.5))
    entry = {"worker": "test_async_sleep", "child_concurrency": 5}
    workers = start_workers(backend_uri, {queue: entry}, "--halt-when-empty")
    assert workers.wait(90) == 0, workers.output()
    # Then no more than 5 ran at once
    moments = sorted(
        [(e["time"], 1) for e in events(ledger, "start")]
        + [(e["time"], -1) for e in events(ledger, "done")]
    )
    running = peak = 0
    for _, step in moments:
        running += step
        peak = max(peak, running)
    assert peak == 5


def test_sigterm_lets_running_coroutines_finish_and_hands_back_the_rest(
    backend_uri, queue, ledger, start_workers
):
    # Given one child running 5 tasks of 2 s at once, 5 more waiting
    transport = get_transport(backend_uri)
    transport.submit_tasks(queue, _payloads(ledger, 10, seconds=2))
    entry = {"worker": "test_async_sleep", "child_concurrency": 5, "prefetch": 10}
    workers = start_workers(backend_uri, {queue: entry})
    wait_for(lambda: len(events(ledger, "start")) >= 5, 60, "5 tasks to start")
    # When the supervisor gets SIGTERM
    workers.signal(signal.SIGTERM)
    # Then the 5 running finish, nothing else starts, and the command exits 0
    assert workers.wait(60) == 0, workers.output()
    assert len(events(ledger, "start")) == 5 and len(events(ledger, "done")) == 5
    # and the other 5 are back, their attempt not counted
    wait_for(lambda: transport.queue_stats(queue).ready == 5, 30, "5 tasks back in the queue")
    with transport.consumer(queue, prefetch=5) as consumer:
        attempts = [consumer.reserve(timeout=5) for _ in range(5)]
    assert [d.attempt for d in attempts if d is not None] == [1] * 5


def test_a_task_blocking_the_loop_costs_the_others_no_liveness(
    backend_uri, queue, ledger, start_workers
):
    # Given one task that blocks its child's event loop past the recovery bound, beside
    # five that await
    transport = get_transport(backend_uri)
    block = transport.features.recovery_seconds + 1
    payloads = [{"ledger": str(ledger), "n": 0, "block": block}]
    payloads += [{"ledger": str(ledger), "n": n, "seconds": 0.5} for n in range(1, 6)]
    transport.submit_tasks(queue, payloads)
    workers = start_workers(backend_uri, {queue: "test_async_block"}, "--halt-when-empty")
    assert workers.wait(120) == 0, workers.output()
    # Then nothing was delivered twice: the child's liveness held while its loop was stuck
    starts = Counter(e["payload"]["n"] for e in events(ledger, "start"))
    assert starts == Counter(range(6))
    # and the child said which task blocked its loop
    assert "has blocked the event loop" in workers.output()
