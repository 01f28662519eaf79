"""How an attempt ends: acknowledged, retried with back-off, or sent to the failed store.

Both run loops (``asynctask.runner``, one task at a time, and ``asynctask.eventloop``, many
at once) settle every ended attempt here, so retries, ``dont_retry`` and the failed store
behave the same whatever runs the task.
"""

from __future__ import annotations

import inspect
import json
import logging
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from asynctask import events
from asynctask.errors import AsynctaskError
from asynctask.status import StatusNotKept

if TYPE_CHECKING:
    from asynctask.status import StartVerdict, State
    from asynctask.transport import Consumer, Delivery, Transport
    from asynctask.worker import AsyncTaskWorker


class SetupFailed(Exception):
    """The worker's ``setup()`` raised ``error``: the child cannot start (no task ran)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(f"setup() raised {type(error).__name__}: {error}")
        self.error = error


class TaskTimeout(TimeoutError):
    """A task ran past its worker's ``timeout``: a failed attempt like any error."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"task ran past its worker's timeout of {timeout:g} s")


@dataclass
class LoopResult:
    """What a run loop did."""

    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    recycled: bool = False
    #: a task could not be stopped at its timeout: the child must be replaced
    replaced: bool = False


def error_text(exc: BaseException) -> str:
    """An exception with its traceback, as stored with a retried or failed task."""
    return "".join(traceback.format_exception(exc)).strip()


def tracking(worker: AsyncTaskWorker, configured: bool | None) -> bool:
    """Whether a run loop keeps statuses: the queue entry's ``track_status``, else the
    worker class's."""
    return type(worker).track_status if configured is None else configured


def announce_tracking(worker: AsyncTaskWorker, transport: Transport, queue: str, on: bool) -> None:
    """Tell the state store whether ``queue``'s workers keep statuses (once per run loop),
    so that ``status`` can refuse the tasks of an untracked queue instead of reading
    ``queued`` forever. A transport that keeps no status needs nothing."""
    try:
        store = transport.state()
        transport._call(store.set_tracking, queue, on)
        transport._note_tracking(queue, on)  # submits through it follow at once
    except StatusNotKept:
        return
    except AsynctaskError as exc:  # the run loop meets the outage itself, right after
        worker.logger.warning("Could not record track_status=%s for queue %s: %s", on, queue, exc)


def start(worker: AsyncTaskWorker, consumer: Consumer, delivery: Delivery) -> StartVerdict:
    """Mark the task running, unless it was cancelled or expired meanwhile: then it is
    settled already (never run, not in the failed store) and its outcome is reported."""
    verdict = consumer.start(delivery)
    if verdict != "run":
        not_started(worker, delivery, verdict)
    return verdict


def not_started(
    worker: AsyncTaskWorker,
    delivery: Delivery,
    verdict: Literal["cancelled", "expired", "failed"],
) -> None:
    """Report a task that ``Consumer.start`` found cancelled or expired (never run)."""
    worker.logger.info("Task %s was %s before it started; not run", delivery.id, verdict)
    events.task_finished(worker, delivery, verdict, None)


def encode_result(
    worker: AsyncTaskWorker, delivery: Delivery, result: object, limit: int
) -> str | None:
    """``process()``'s return value as JSON text for the task's status, or None.

    A value that is not JSON, or whose text is over ``limit`` bytes (the setting
    ``asynctask_max_payload_bytes``), is not stored: the task still succeeds, and the
    log says why.
    """
    if result is None:
        return None
    try:
        text = json.dumps(result, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        worker.logger.warning(
            "Task %s succeeded, but its result is not stored: it is not JSON (%s: %s)",
            delivery.id,
            type(exc).__name__,
            exc,
        )
        return None
    size = len(text.encode())
    if size > limit:
        worker.logger.warning(
            "Task %s succeeded, but its result is not stored: %d bytes of JSON, over "
            "asynctask_max_payload_bytes (%d)",
            delivery.id,
            size,
            limit,
        )
        return None
    return text


def cancelled_while_running(log: logging.Logger, delivery: Delivery) -> None:
    """Say that an acknowledged task had been cancelled while it ran."""
    log.warning(
        "Task %s was cancelled while it ran; it stays cancelled and its result is discarded",
        delivery.id,
    )


def record(
    consumer: Consumer,
    delivery: Delivery,
    state: State,
    error: str | None = None,
    result_json: str | None = None,
    *,
    send_now: bool = False,
) -> bool | None:
    """Write an outcome to the store of ``asynctask_state``, when another transport keeps
    this one's statuses (a transport keeping its own wrote it with the settle).

    ``send_now``: then send it, for a consumer whose ``StatusFeed`` holds writes (a
    success until the next write, up to 20 ms on redis), before the broker is told the
    task is done (``ack``, ``retry``). With the ack sent first, a worker dying meanwhile
    (OOM, SIGKILL) took the outcome with it while the broker had forgotten the task, so
    it read ``running`` for good and ``wait`` never returned. The task's start, if still
    held, goes with it as one write. A store that cannot be reached leaves the writes
    kept in the feed (``flush_status_feed`` never raises), sent first with its next write.

    True when the feed knows the task was cancelled while it ran (a success: its result
    is discarded, ``cancelled_while_running`` says so), else None.
    """
    if not consumer.tracking:
        return None
    cancelled = consumer.record_outcome(delivery, state, error, result_json)
    if send_now:
        consumer.flush_status_feed(waiting=False)
    return cancelled


def settle(
    worker: AsyncTaskWorker,
    consumer: Consumer,
    delivery: Delivery,
    exc: BaseException | None,
    result: object = None,
) -> bool:
    """Acknowledge, retry or fail a delivery after ``process()``; True if it succeeded.

    ``result`` is what ``process()`` returned: stored with the status as JSON.
    """
    log = worker.logger
    if exc is None:
        result_json = None
        if result is not None and consumer.tracking:
            limit = consumer.transport.max_payload_bytes
            result_json = encode_result(worker, delivery, result, limit)
        fed = consumer.has_status_feed
        told = None
        if fed:  # (a task cancelled meanwhile stays cancelled: the store's script keeps it)
            told = record(consumer, delivery, "succeeded", result_json=result_json, send_now=True)
        if consumer.ack(delivery, result_json) or told:
            cancelled_while_running(log, delivery)
        if not fed:
            record(consumer, delivery, "succeeded", result_json=result_json)
        events.task_finished(worker, delivery, "succeeded", None)
        log.debug("Processing complete")
        return True
    if consumer.tracking and cancelled_elsewhere(consumer, delivery):
        # (a transport keeping its own statuses drops it in its retry/fail instead)
        consumer.ack(delivery)
        return _dropped_cancelled(worker, delivery, exc)
    error = error_text(exc)
    attempts_left = worker.max_retries + 1 - delivery.attempt
    # The log follows the settle: a transport keeping its own statuses finds a cancel
    # there and drops the task instead (retry/fail return True), and says so.
    if isinstance(exc, worker.dont_retry) or attempts_left <= 0:
        # The failed store first, then ``failed`` (sent at once, never held): a waiter
        # woken by ``failed`` finds the task in the failed store (the status contract).
        # A worker killed between the two leaves the task there reading ``running``:
        # ``failed`` written first closed that window but broke this promise (the
        # contract's retry-then-fail story on AMQP found the failed store empty)
        if consumer.fail(delivery, error):
            return _dropped_cancelled(worker, delivery, exc)
        why = "not retried" if isinstance(exc, worker.dont_retry) else "no retries left"
        log.error(
            "Task %s failed on attempt %d (%s); moved to the failed store of %s",
            delivery.id,
            delivery.attempt,
            why,
            delivery.queue,
            exc_info=exc,
        )
        if not consumer.fail_writes_failed:
            record(consumer, delivery, "failed", error)
        events.task_finished(worker, delivery, "failed", exc)
        return False
    delay = worker.backoff(delivery.attempt)
    fed = consumer.has_status_feed
    if fed:  # (a task cancelled meanwhile stays cancelled: the store's script keeps it)
        record(consumer, delivery, "retrying", error, send_now=True)
    if consumer.retry(delivery, delay, error):
        return _dropped_cancelled(worker, delivery, exc)
    log.error(
        "An unhandled exception occurred while processing the payload "
        "(task %s, attempt %d of %d); retrying in %g s",
        delivery.id,
        delivery.attempt,
        worker.max_retries + 1,
        delay,
        exc_info=exc,
    )
    if not fed:
        record(consumer, delivery, "retrying", error)
    events.task_finished(worker, delivery, "retried", exc)
    return False


def _dropped_cancelled(worker: AsyncTaskWorker, delivery: Delivery, exc: BaseException) -> bool:
    """Report a task that raised after it was cancelled while it ran: it was dropped,
    neither retried nor failed (DESIGN.md section 6). False: it did not succeed."""
    worker.logger.warning(
        "Task %s was cancelled while it ran, then raised %s; it stays cancelled: "
        "not retried, not in the failed store",
        delivery.id,
        type(exc).__name__,
    )
    events.task_finished(worker, delivery, "cancelled", exc)
    return False


def cancelled_elsewhere(consumer: Consumer, delivery: Delivery) -> bool:
    """Whether the store of ``asynctask_state`` says the task was cancelled while it ran
    (False when the transport keeps its own statuses: its ``retry``/``fail`` drop a
    cancelled task themselves). Asked only when an attempt raised: a task that failed
    after its cancel is neither retried nor failed (DESIGN.md section 6). A consumer's
    ``StatusFeed`` that knows of no cancel answers without a round trip."""
    store = consumer.transport.external_state()
    if store is None:
        return False
    known = consumer._status_feed
    feed = known[1] if known is not None and known[0] is store else None
    if feed is not None and feed.may_start(delivery.id):  # every cancel known, not this
        return False
    found = consumer.transport._call(store.statuses, [delivery.id])[0]
    return found is not None and found.state == "cancelled"


def refuse_unsigned(worker: AsyncTaskWorker, consumer: Consumer, delivery: Delivery) -> bool:
    """Fail a delivery whose signature does not hold, without running it; True if it was.

    Only a process holding ``asynctask_signing_key`` checks: without keys this is one
    attribute test.
    """
    unsafe = consumer.transport.signature_problem(delivery)
    if unsafe is None:
        return False
    worker.logger.error("Task %s: %s; moved to the failed store", delivery.id, unsafe)
    consumer.fail(delivery, unsafe)
    if not consumer.fail_writes_failed:
        record(consumer, delivery, "failed", unsafe)
    events.task_finished(worker, delivery, "failed", None)
    return True


def give_up_if_spent(worker: AsyncTaskWorker, consumer: Consumer, delivery: Delivery) -> bool:
    """Fail a delivery past its last attempt without running it; True if it was."""
    if delivery.attempt <= worker.max_retries + 1:
        return False
    # Its earlier deliveries ended with their worker dead: do not run it again.
    error = (
        f"gave up after {delivery.attempt - 1} attempts; the last ones ended without a "
        "result (the worker process died or was killed while running it)"
    )
    worker.logger.error("Task %s: %s; moved to the failed store", delivery.id, error)
    consumer.fail(delivery, error)
    if not consumer.fail_writes_failed:
        record(consumer, delivery, "failed", error)
    events.task_finished(worker, delivery, "failed", None)
    return True


def refuse_awaitable(worker: AsyncTaskWorker, outcome: object) -> None:
    """Fail an attempt whose plain ``process()`` returned an awaitable it did not run.

    (A decorator that hides ``async def`` does that.) The run loops call it only for a
    result that is not None: the ABC check costs about a microsecond, a tenth of a no-op
    task on localmem.
    """
    if inspect.isawaitable(outcome):
        if inspect.iscoroutine(outcome):
            outcome.close()
        raise TypeError(
            f"{type(worker).__qualname__}.process() returned an awaitable without running "
            "it; declare process() with async def so that the worker awaits it"
        )
