"""How an attempt ends: acknowledged, retried with back-off, or sent to the failed store.

Both run loops (``asynctask.runner``, one task at a time, and ``asynctask.eventloop``, many
at once) settle every ended attempt here, so retries, ``dont_retry`` and the failed store
behave the same whatever runs the task.
"""

from __future__ import annotations

import inspect
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING

from asynctask import events

if TYPE_CHECKING:
    from asynctask.transport import Consumer, Delivery
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


def settle(
    worker: AsyncTaskWorker, consumer: Consumer, delivery: Delivery, exc: BaseException | None
) -> bool:
    """Acknowledge, retry or fail a delivery after ``process()``; True if it succeeded."""
    log = worker.logger
    if exc is None:
        consumer.ack(delivery)
        events.task_finished(worker, delivery, "succeeded", None)
        log.debug("Processing complete")
        return True
    error = error_text(exc)
    attempts_left = worker.max_retries + 1 - delivery.attempt
    if isinstance(exc, worker.dont_retry) or attempts_left <= 0:
        why = "not retried" if isinstance(exc, worker.dont_retry) else "no retries left"
        log.error(
            "Task %s failed on attempt %d (%s); moved to the failed store of %s",
            delivery.id,
            delivery.attempt,
            why,
            delivery.queue,
            exc_info=exc,
        )
        consumer.fail(delivery, error)
        events.task_finished(worker, delivery, "failed", exc)
        return False
    delay = worker.backoff(delivery.attempt)
    log.error(
        "An unhandled exception occurred while processing the payload "
        "(task %s, attempt %d of %d); retrying in %g s",
        delivery.id,
        delivery.attempt,
        worker.max_retries + 1,
        delay,
        exc_info=exc,
    )
    consumer.retry(delivery, delay, error)
    events.task_finished(worker, delivery, "retried", exc)
    return False


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
