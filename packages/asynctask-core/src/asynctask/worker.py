"""``AsyncTaskWorker``: the class users subclass to process tasks.

A worker names itself (``name``), implements ``process(payload)`` and may set how failures
are handled. The run loop that drives it lives in ``asynctask.runner``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from asynctask.transport import Delivery, Transport
    from asynctask.validation import Payload


class AsyncTaskWorker:
    """Subclass me: set ``name`` and implement ``process(payload)``.

    Class attributes:

    ``max_retries`` (3)
        retries after the first attempt; four attempts in all, then the failed store.
    ``retry_backoff`` (1.0) and ``retry_backoff_max`` (300.0)
        seconds before retry *n* is ``min(retry_backoff * 2**(n-1), retry_backoff_max)``.
    ``dont_retry`` (``()``)
        exception classes that go to the failed store at once.
    ``timeout`` (``None``)
        seconds a task may run; past it the task is stopped (its child process is
        replaced) and the attempt counts as failed.
    ``max_tasks_per_child`` (``None``)
        recycle the child process after this many tasks.
    ``prefetch`` (4)
        tasks a child reserves at a time. More makes short tasks faster (fewer round
        trips); a killed child's reserved tasks come back, so up to this many may run
        twice, and a long task holds the ones reserved behind it: set 1 for long tasks.
        The setting ``asynctask_workers`` can override it per queue.
    """

    name: ClassVar[str | None] = None
    max_retries: ClassVar[int] = 3
    retry_backoff: ClassVar[float] = 1.0
    retry_backoff_max: ClassVar[float] = 300.0
    dont_retry: ClassVar[tuple[type[BaseException], ...]] = ()
    timeout: ClassVar[float | None] = None
    max_tasks_per_child: ClassVar[int | None] = None
    prefetch: ClassVar[int] = 4

    def __init__(self) -> None:
        self.logger = logging.getLogger(f"asynctask.worker.{self.name or type(self).__name__}")
        self._transport: Transport | None = None
        self._queue_name: str | None = None
        #: the task being processed (its id, queue, attempt), while ``process()`` runs
        self.delivery: Delivery | None = None

    def setup(self) -> None:
        """Called once per child process before the first task (open connections here)."""

    def teardown(self) -> None:
        """Called once per child process after the last task."""

    def process(self, payload: Payload) -> Any:
        """Do the work of one task. Raise to have it retried."""
        raise NotImplementedError(f"{type(self).__qualname__}.process() is not implemented")

    def requeue(self, payload: Payload | None) -> str:
        """Submit ``payload`` again to the tail of the queue being worked on; return its id."""
        if self._transport is None or self._queue_name is None:
            raise RuntimeError(
                f"{type(self).__qualname__}.requeue() works only while the worker is "
                "processing a queue"
            )
        task_id = self._transport.submit_task(self._queue_name, payload)
        self.logger.debug("Requeued payload: %r", payload)
        return task_id

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retrying after failed attempt number ``attempt``."""
        return float(min(self.retry_backoff * 2 ** max(0, attempt - 1), self.retry_backoff_max))
