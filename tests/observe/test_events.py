"""The lifecycle hooks in one process (localmem): what they receive, and a hook that raises."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest

from asynctask import AsyncTaskWorker, get_transport, hookimpl
from asynctask import events as events_module
from asynctask.plugins import load_plugins
from asynctask.runner import LoopOptions, run_loop
from asynctask.testing import unique_queue


class FailsTwice(AsyncTaskWorker):
    name = "fails_twice_inline"
    max_retries = 3
    retry_backoff = 0.01

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def process(self, payload):
        self.calls += 1
        if payload.get("always") or self.calls <= 2:
            raise ValueError(f"failing {payload}")


class Recorder:
    """A plugin object that keeps every event."""

    def __init__(self) -> None:
        self.seen: list[tuple] = []

    @hookimpl
    def asynctask_task_submitted(self, queue, ids):
        self.seen.append(("submitted", queue, tuple(ids)))

    @hookimpl
    def asynctask_task_started(self, queue, worker, task_id, attempt):
        self.seen.append(("started", queue, worker, task_id, attempt))

    @hookimpl
    def asynctask_task_finished(self, queue, worker, task_id, attempt, outcome, duration, error):
        self.seen.append(("finished", queue, worker, task_id, attempt, outcome, duration, error))


class Raiser:
    """A plugin whose hooks raise: it must be switched off, never failing a task."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def asynctask_task_started(self, task_id):
        self.calls += 1
        raise RuntimeError("broken plugin")


@pytest.fixture
def plugin() -> Iterator:
    registry = load_plugins()
    added: list[object] = []

    def add(obj: object, name: str) -> object:
        registry.register_plugin(obj, name)
        added.append(obj)
        return obj

    yield add
    for obj in added:
        if registry.manager.is_registered(obj):
            registry.manager.unregister(obj)
    events_module.bind(registry.manager)


def drain(worker, queue):
    options = LoopOptions(halt_when_empty=True, wait=0.02)
    return run_loop(worker, get_transport("localmem:"), queue, options)


def test_hooks_see_submit_every_attempt_and_its_outcome(plugin):
    # Given a plugin that records events, and a task that fails twice then succeeds
    recorder = plugin(Recorder(), "recorder")
    queue = unique_queue()
    [tid] = get_transport("localmem:").submit_tasks(queue, [{"n": 1}])
    # When a worker drains the queue
    drain(FailsTwice(), queue)
    # Then the plugin saw the submit, three starts and three ends: retried, retried, succeeded
    assert recorder.seen[0] == ("submitted", queue, (tid,))
    starts = [e for e in recorder.seen if e[0] == "started"]
    assert starts == [("started", queue, "fails_twice_inline", tid, n) for n in (1, 2, 3)]
    ends = [e for e in recorder.seen if e[0] == "finished"]
    assert [(e[4], e[5]) for e in ends] == [(1, "retried"), (2, "retried"), (3, "succeeded")]
    assert all(isinstance(e[7], ValueError) for e in ends[:2]) and ends[2][7] is None
    assert all(e[6] >= 0 for e in ends)


def test_a_task_past_its_retries_ends_failed_with_its_error(plugin):
    recorder = plugin(Recorder(), "recorder")
    queue = unique_queue()
    get_transport("localmem:").submit_tasks(queue, [{"always": True}])
    drain(FailsTwice(), queue)
    ends = [(e[4], e[5]) for e in recorder.seen if e[0] == "finished"]
    assert ends == [(1, "retried"), (2, "retried"), (3, "retried"), (4, "failed")]
    assert get_transport("localmem:").queue_stats(queue).failed == 1


@pytest.mark.parametrize("worker_class", ["SyncOk", "AsyncOk"])
def test_cancelled_and_expired_tasks_end_with_their_outcome_and_never_start(plugin, worker_class):
    # Given a cancelled task, an expired one and a plain one, their statuses kept in
    # another store (so that the cancelled one is still in the queue when a worker
    # comes: a transport keeping its own drops it at once)
    recorder = plugin(Recorder(), "recorder")
    transport = get_transport("localmem:" + unique_queue("events"))
    transport.state_uri = "localmem:" + unique_queue("state")
    queue = unique_queue()
    cancelled = transport.submit_task(queue, {})
    expired = transport.submit_task(queue, {}, expires=0.05)
    plain = transport.submit_task(queue, {})
    assert transport.cancel(cancelled) is True
    time.sleep(0.1)
    # When a worker (one at a time, or on the event loop) drains the queue
    worker = {"SyncOk": SyncOk, "AsyncOk": AsyncOk}[worker_class]()
    options = LoopOptions(halt_when_empty=True, wait=0.02)
    result = run_loop(worker, transport, queue, options)
    # Then only the plain one started; the others ended with their outcome, never run
    assert result.succeeded == 1 and result.failed == 0
    starts = [e[3] for e in recorder.seen if e[0] == "started"]
    assert starts == [plain]
    ends = {e[3]: e[5] for e in recorder.seen if e[0] == "finished"}
    assert ends == {cancelled: "cancelled", expired: "expired", plain: "succeeded"}
    assert transport.stored(queue) == 0 and transport.failed_tasks(queue) == []


class SyncOk(AsyncTaskWorker):
    name = "sync_ok_inline"

    def process(self, payload):
        return None


class AsyncOk(AsyncTaskWorker):
    name = "async_ok_inline"

    async def process(self, payload):
        return None


def test_a_hook_that_raises_is_logged_once_and_switched_off(plugin, caplog):
    # Given a broken plugin beside a working one
    raiser = plugin(Raiser(), "raiser")
    recorder = plugin(Recorder(), "recorder")
    queue = unique_queue()
    get_transport("localmem:").submit_tasks(queue, [{"n": n} for n in range(3)])

    class Ok(AsyncTaskWorker):
        name = "ok_inline"

        def process(self, payload):
            return None

    # When three tasks run
    with caplog.at_level(logging.ERROR, logger="asynctask.events"):
        result = drain(Ok(), queue)
    # Then every task succeeded, the broken hook ran once and was logged once
    assert result.succeeded == 3 and result.failed == 0
    assert raiser.calls == 1
    logged = [r for r in caplog.records if "raiser" in r.getMessage()]
    assert len(logged) == 1 and "switched off" in logged[0].getMessage()
    # and the working plugin still saw every start
    assert len([e for e in recorder.seen if e[0] == "started"]) == 3


def test_with_no_implementation_an_event_is_skipped(plugin):
    # The fast path: no implementation means an empty list, so the call returns at once
    registry = load_plugins()
    impls = registry.manager.hook.asynctask_task_finished.get_hookimpls()
    if not impls:
        assert events_module._finished.impls == []
    recorder = plugin(Recorder(), "recorder")
    assert events_module._finished.impls
    registry.manager.unregister(recorder)
    events_module.bind(registry.manager)
    assert len(events_module._finished.impls) == len(impls)


class Idle:
    """A plugin with nothing to do in this process (metrics with no port, say)."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def asynctask_task_finished(self, queue, outcome):
        self.calls += 1
        raise events_module.NotListening


def test_a_hook_not_listening_is_called_once_and_not_logged(plugin, caplog):
    # Given a plugin whose finished hook says it has nothing to do in this process
    idle = plugin(Idle(), "idle")
    recorder = plugin(Recorder(), "recorder")
    queue = unique_queue()
    get_transport("localmem:").submit_tasks(queue, [{"n": n} for n in range(3)])
    # When three tasks run
    with caplog.at_level(logging.DEBUG, logger="asynctask.events"):
        result = drain(SyncOk(), queue)
    # Then it was called once, never again, with nothing logged; the others saw every end
    assert result.succeeded == 3
    assert idle.calls == 1
    assert [r for r in caplog.records if "idle" in r.getMessage()] == []
    assert len([e for e in recorder.seen if e[0] == "finished"]) == 3


class Napping:
    """A plugin idle for now (tracing before an SDK is configured): its started hook says
    so with a recheck while ``awake`` is False."""

    def __init__(self) -> None:
        self.awake = False
        self.started: list[str] = []
        self.finished: list[str] = []

    @hookimpl
    def asynctask_task_started(self, task_id):
        if not self.awake:
            self.started.append(f"asleep {task_id}")
            raise events_module.NotListening(recheck=0.2)
        self.started.append(task_id)

    @hookimpl
    def asynctask_task_finished(self, task_id):
        self.finished.append(task_id)


def test_a_hook_not_listening_for_now_is_asked_again_after_its_recheck(plugin, caplog):
    # Given a plugin idle for now (its started hook asks for a recheck) and a recorder
    napping = plugin(Napping(), "napping")
    recorder = plugin(Recorder(), "recorder")
    queue = unique_queue()
    transport = get_transport("localmem:")
    first = transport.submit_tasks(queue, [{"n": n} for n in range(3)])
    # When three tasks run within its recheck
    with caplog.at_level(logging.DEBUG, logger="asynctask.events"):
        assert drain(SyncOk(), queue).succeeded == 3
    # Then it was asked once; its finished hook, paused with it, saw none of them (a
    # started call that bowed out is never followed by a finished one); nothing logged
    assert napping.started == [f"asleep {first[0]}"]
    assert napping.finished == []
    assert [r for r in caplog.records if "napping" in r.getMessage()] == []
    # and when it wakes and tasks start after the recheck, both its hooks see each of them
    time.sleep(0.3)
    napping.awake = True
    later = transport.submit_tasks(queue, [{"n": n} for n in range(2)])
    assert drain(SyncOk(), queue).succeeded == 2
    assert napping.started[1:] == later and napping.finished == later
    # while the other plugin saw every start and end
    assert len([e for e in recorder.seen if e[0] == "started"]) == 5
    assert len([e for e in recorder.seen if e[0] == "finished"]) == 5


def test_an_idle_plugin_paused_costs_the_run_loop_no_event_call(plugin):
    # Given only a plugin idle for now: once it bowed out, the run loop calls no event
    napping = plugin(Napping(), "napping")
    queue = unique_queue()
    get_transport("localmem:").submit_tasks(queue, [{"n": 1}, {"n": 2}])
    assert drain(SyncOk(), queue).succeeded == 2
    others = any(
        impl.plugin_name != "napping"
        for impl in events_module._started.impls + events_module._finished.impls
    )
    assert events_module.task_hooks is others
    # and once the pause is over, the next start calls it again
    time.sleep(0.3)
    assert events_module.task_hooks is True
    napping.awake = True
    get_transport("localmem:").submit_tasks(queue, [{"n": 3}])
    assert drain(SyncOk(), queue).succeeded == 1
    assert len(napping.started) == 2 and len(napping.finished) == 1


def test_task_hooks_flag_follows_the_implementations(plugin):
    # Given no plugin implementing the task hooks (the bench's plugins switched off)
    registry = load_plugins()
    names = ("asynctask_task_started", "asynctask_task_finished")
    had = any(getattr(registry.manager.hook, n).get_hookimpls() for n in names)
    assert events_module.task_hooks is had
    # When one is registered, Then the run loop calls the events again
    recorder = plugin(Recorder(), "recorder")
    assert events_module.task_hooks is True
    registry.manager.unregister(recorder)
    events_module.bind(registry.manager)
    assert events_module.task_hooks is had
