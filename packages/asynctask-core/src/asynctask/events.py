"""The lifecycle events of DESIGN.md section 8, as one typed function per event.

The run loop, the supervisor and ``Transport.submit_tasks`` call these functions, one
line per event; they call the plugins' ``asynctask_task_*`` / ``asynctask_child_event``
hooks with keyword arguments. Three promises:

* **Nearly free when unused.** ``bind()`` (called by ``load_plugins``) keeps, per hook,
  the list of implementations; with none, an event is one truth test of an empty list
  and returns. The bench measures the drain with and without a plugin.
* **A hook never fails a task.** Implementations are called one by one; one that raises
  is logged once, with its traceback, and switched off for the rest of this process.
  The others still run.
* **An idle plugin bows out.** An implementation with nothing to do in this process
  for good (metrics with no ``--metrics-port``) raises ``NotListening``: it is not
  called again here, and nothing is logged. An installed, idle plugin then costs the
  run loop nothing a task (otel's and prometheus' hooks cost a redis child ~17k
  instructions a task, callgrind, before). One idle *for now* (tracing with no SDK
  configured yet) raises ``NotListening(recheck=seconds)``: that plugin's task hooks
  (started and finished together, so that a span opened is always closed) are paused
  and called again from the first task that starts ``recheck`` seconds later.
* **In the process where it happens.** Nothing is sent anywhere: a plugin that needs the
  numbers elsewhere (metrics in the supervisor) carries them itself.

Pluggy's hook wrappers are not called for these hooks (an event has no result to wrap).
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from asynctask import hookspecs
from asynctask.hookspecs import ChildEvent, Outcome

if TYPE_CHECKING:
    import pluggy
    from pluggy import HookImpl

    from asynctask.transport import Delivery
    from asynctask.worker import AsyncTaskWorker

logger = logging.getLogger("asynctask.events")


class NotListening(Exception):
    """Raised by a lifecycle hook's implementation that has nothing to do in this process:
    it is switched off here, silently (a raising one is logged).

    For good by default. With ``recheck`` (seconds), from a task hook
    (``asynctask_task_started``/``asynctask_task_finished``): every task hook of its
    plugin is paused and called again from the first task that starts ``recheck``
    seconds later or after, in the thread that starts it (a timer thread only marks the
    pause as over: the run loop then calls the events again). A plugin whose answer may
    change (an SDK configured later) is asked again that often, at no cost a task
    meanwhile (otel with no SDK: ~6 Python calls a task of a no-op drain before).
    """

    def __init__(self, recheck: float | None = None) -> None:
        super().__init__()
        #: seconds to pause the plugin's task hooks; None: switched off for good
        self.recheck = recheck


def _no_arguments(values: object) -> tuple[()]:
    return ()


class _Hook:
    """The live implementations of one hook in this process."""

    __slots__ = ("arguments", "bound", "calls", "impls", "name", "off")

    def __init__(self, name: str) -> None:
        self.name = name
        #: the hookspec's argument names, in the order ``call`` takes their values
        self.arguments = tuple(inspect.signature(getattr(hookspecs, name)).parameters)
        #: replaced, never mutated, so a thread iterating an old list is never disturbed
        self.impls: list[HookImpl] = []
        #: every implementation the plugin manager gave (``impls`` without ``off`` and the
        #: paused plugins'), and the ones switched off for good
        self.bound: list[HookImpl] = []
        self.off: frozenset[HookImpl] = frozenset()
        #: per implementation: it, its function, a getter of the values it asks for and
        #: their count, made once at ``bind``: a call is then two C calls, no dict or list
        #: (building those cost about 1 us a task per plugin)
        self.calls: list[tuple[HookImpl, Callable[..., Any], Callable[[Any], Any], int]] = []

    def bind(self, impls: list[HookImpl]) -> None:
        """Take ``impls`` (in call order), none switched off."""
        self.bound, self.off = impls, frozenset()
        self._live()

    def _live(self) -> None:
        """Call the implementations bound, less those switched off or paused."""
        impls = [i for i in self.bound if i not in self.off and i.plugin_name not in _paused]
        calls = []
        for impl in impls:
            at = tuple(self.arguments.index(name) for name in impl.argnames)
            getter: Callable[[Any], Any] = itemgetter(*at) if at else _no_arguments
            calls.append((impl, impl.function, getter, len(at)))
        self.impls, self.calls = impls, calls
        _note_task_hooks()

    def call(self, *values: Any) -> list[Any]:
        """Call every implementation with ``values`` (the hookspec's arguments, in order)."""
        results = []
        for impl, function, arguments, count in self.calls:
            try:
                if count == 1:
                    results.append(function(arguments(values)))
                else:
                    results.append(function(*arguments(values)))
            except Exception as exc:
                self.drop(impl, exc)
        return results

    def notify(self, values: tuple[Any, ...]) -> None:
        """``call`` without the results (a task's events: no list built per task)."""
        for impl, function, arguments, count in self.calls:
            try:
                if count == 1:
                    function(arguments(values))
                else:
                    function(*arguments(values))
            except Exception as exc:
                self.drop(impl, exc)

    def drop(self, impl: HookImpl, exc: Exception) -> None:
        """Switch off ``impl``, which raised ``exc``: logged, unless it was
        ``NotListening``; paused with its plugin's other task hooks when that said
        ``recheck`` (``_pause``)."""
        if isinstance(exc, NotListening) and exc.recheck is not None and self in _TASK_HOOKS:
            _pause(impl.plugin_name, exc.recheck)
            return
        with _lock:
            self.off = self.off | {impl}
            self._live()
        if not isinstance(exc, NotListening):
            logger.error(
                "The %s hook of plugin %r raised; it is switched off in this process "
                "(pid %d). Tasks are not affected. Report it to the plugin's authors.",
                self.name,
                impl.plugin_name,
                os.getpid(),
                exc_info=exc,
            )


_headers = _Hook("asynctask_submit_headers")
_submitted = _Hook("asynctask_task_submitted")
_started = _Hook("asynctask_task_started")
_finished = _Hook("asynctask_task_finished")
_child = _Hook("asynctask_child_event")
_HOOKS = (_headers, _submitted, _started, _finished, _child)
_TASK_HOOKS = (_started, _finished)

#: the plugins (by name) whose task hooks are paused (``NotListening(recheck=...)``),
#: the timer of each, and those whose pause is over, to be called again from the next
#: ``task_started``
_paused: set[str] = set()
_pause_timers: dict[str, threading.Timer] = {}
_pause_ended: set[str] = set()
#: whether some pause is over (read once a task by ``task_started``)
_pause_over = False

#: whether some plugin implements ``asynctask_task_started`` or ``asynctask_task_finished``
#: in this process: the run loop reads it once a task and, when False, calls neither
#: ``task_started`` nor ``task_finished`` (two calls a task of a no-op drain, ~1k
#: instructions, callgrind)
task_hooks = False


#: whether some ``asynctask_task_finished`` implementation asks for ``duration``: the
#: start times are kept only then
_timed = False


#: whether some plugin implements ``asynctask_submit_headers`` or
#: ``asynctask_task_submitted`` in this process: a transport's submit reads it and, when
#: False, calls neither ``submit_headers`` nor ``task_submitted``
submit_hooks = False


def _note_task_hooks() -> None:
    global task_hooks, submit_hooks, _timed
    task_hooks = bool(_started.impls or _finished.impls) or _pause_over
    submit_hooks = bool(_headers.impls or _submitted.impls)
    _timed = any("duration" in impl.argnames for impl in _finished.impls)


#: monotonic start time of each running attempt, by (queue, task id), for ``duration``;
#: kept only while some implementation of ``asynctask_task_finished`` asks for it
_started_at: dict[tuple[str, str], float] = {}
_lock = threading.Lock()


def _pause(plugin: str, seconds: float) -> None:
    """Stop calling ``plugin``'s task hooks until the first ``task_started`` at least
    ``seconds`` from now. Its started and finished hooks are paused and come back
    together: a pair of calls is never split by a pause or its end."""
    with _lock:
        if plugin in _paused:
            return  # (two threads' starts heard it at once)
        _paused.add(plugin)
        for hook in _TASK_HOOKS:
            hook._live()
        timer = _pause_timers[plugin] = threading.Timer(seconds, _end_pause, (plugin,))
        timer.daemon = True
        timer.start()


def _end_pause(plugin: str) -> None:
    """(A timer thread.) ``plugin``'s pause is over: the run loop calls the events again,
    and the next ``task_started`` calls it."""
    global _pause_over
    with _lock:
        _pause_timers.pop(plugin, None)
        if plugin in _paused:
            _pause_ended.add(plugin)
            _pause_over = True
            _note_task_hooks()


def _resume() -> None:
    """Call the plugins whose pause is over again (from a task's start)."""
    global _pause_over
    with _lock:
        _paused.difference_update(_pause_ended)
        _pause_ended.clear()
        _pause_over = False
        for hook in _TASK_HOOKS:
            hook._live()


def _forget_pauses() -> None:
    global _pause_over
    for timer in _pause_timers.values():
        timer.cancel()
    _pause_timers.clear()
    _paused.clear()
    _pause_ended.clear()
    _pause_over = False


def bind(manager: pluggy.PluginManager | None) -> None:
    """Take the implementations of every lifecycle hook from ``manager`` (None: forget)."""
    with _lock:
        _forget_pauses()
        for hook in _HOOKS:
            if manager is None:
                hook.bind([])
                continue
            caller = getattr(manager.hook, hook.name)
            # pluggy lists the last-registered first-called implementation last
            hook.bind(
                [
                    impl
                    for impl in reversed(caller.get_hookimpls())
                    if not (impl.hookwrapper or impl.wrapper)
                ]
            )
        _started_at.clear()


def submit_headers(queue: str) -> dict[str, str]:
    """The headers plugins add to tasks about to be submitted to ``queue``."""
    if not _headers.impls:
        return {}
    found: dict[str, str] = {}
    for result in _headers.call(queue):
        if result:
            found.update({str(k): str(v) for k, v in result.items()})
    return found


def task_submitted(queue: str, ids: Sequence[str]) -> None:
    """``ids`` were stored on ``queue``."""
    if _submitted.impls:
        _submitted.call(queue, ids)


def task_started(worker: AsyncTaskWorker, delivery: Delivery) -> None:
    """``worker`` is about to run ``delivery``."""
    if _pause_over:
        _resume()
    if _timed:
        _started_at[(delivery.queue, delivery.id)] = time.monotonic()
    if _started.impls:
        values = (
            delivery.queue,
            worker.name or "",
            delivery.id,
            delivery.attempt,
            delivery.headers,
        )
        _started.notify(values)


def task_finished(
    worker: AsyncTaskWorker, delivery: Delivery, outcome: Outcome, error: BaseException | None
) -> None:
    """``delivery``'s attempt ended with ``outcome`` (called after it was settled)."""
    if _finished.impls:
        began = _started_at.pop((delivery.queue, delivery.id), None) if _timed else None
        duration = 0.0 if began is None else time.monotonic() - began
        values = (
            delivery.queue, worker.name or "", delivery.id, delivery.attempt, outcome, duration,
            error,
        )  # fmt: skip
        _finished.notify(values)


def child_event(queue: str, event: ChildEvent, pid: int, exit_status: int | None) -> None:
    """A supervised child of ``queue`` started, restarted or exited."""
    if _child.impls:
        _child.call(queue, event, pid, exit_status)
