"""``AsyncTaskWorker``: the class users subclass to process tasks.

A worker names itself (``name``), implements ``process(payload)`` (plain or ``async def``)
and may set how failures are handled. The run loops that drive it live in
``asynctask.runner`` (one task at a time) and ``asynctask.eventloop`` (many at once).
"""

from __future__ import annotations

import inspect
import logging
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from asynctask.transport import Delivery, Transport
    from asynctask.validation import Payload

#: the delivery being processed by the current thread or asyncio task: a context variable,
#: so that each of a child's concurrent tasks sees its own
CURRENT_DELIVERY: ContextVar[Delivery | None] = ContextVar("asynctask_delivery", default=None)

#: ``child_concurrency`` when a worker does not set it
DEFAULT_ASYNC_CONCURRENCY = 16


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
        seconds a task may run; past it the attempt counts as failed: a coroutine is
        cancelled (it sees ``asyncio.CancelledError``), a plain ``process`` is stopped by
        replacing its child process.
    ``max_tasks_per_child`` (``None``)
        recycle the child process after this many tasks.
    ``prefetch`` (``None``: the transport's ``default_prefetch``, 4; on pgsql and AMQP
        a window sized from the tasks' run time, 1 to 64 and 1 to 32, see their READMEs)
        tasks a child reserves at a time. More makes short tasks faster (fewer round
        trips); a killed child's reserved tasks come back, so up to this many may run
        twice, and a long task holds the ones reserved behind it: set 1 for long tasks.
        The setting ``asynctask_workers`` can override it per queue. A child running
        several tasks at once reserves at least ``child_concurrency``.
    ``child_concurrency`` (``None``: 16 for ``async def process``, 1 otherwise)
        tasks one child runs at once: coroutines on the child's event loop, or, for a
        plain ``process``, that many threads. The queue entry's ``child_concurrency``
        overrides it.
    ``track_status`` (True)
        keep each task's status and result (``asynctask.status``): a write when a task
        starts and one when it ends, fused with the queue's own where the transport can.
        ``False`` saves them, for the last few percent of throughput; then the queue's
        tasks have no status (``status``/``wait`` raise ``StatusNotTracked``), ``cancel``,
        ``expires`` and results are not honoured by its workers. The queue entry's
        ``track_status`` overrides it.
    ``cancel_grace`` (2.0)
        seconds a coroutine cancelled at its ``timeout`` has to end; one that ignores the
        cancellation longer has its child replaced (see ``asynctask.eventloop``).
    """

    name: ClassVar[str | None] = None
    max_retries: ClassVar[int] = 3
    retry_backoff: ClassVar[float] = 1.0
    retry_backoff_max: ClassVar[float] = 300.0
    dont_retry: ClassVar[tuple[type[BaseException], ...]] = ()
    timeout: ClassVar[float | None] = None
    max_tasks_per_child: ClassVar[int | None] = None
    prefetch: ClassVar[int | None] = None
    child_concurrency: ClassVar[int | None] = None
    cancel_grace: ClassVar[float] = 2.0
    track_status: ClassVar[bool] = True

    def __init__(self) -> None:
        self.logger = logging.getLogger(f"asynctask.worker.{self.name or type(self).__name__}")
        self._transport: Transport | None = None
        self._queue_name: str | None = None
        #: the one-at-a-time run loop's task (it sets no context variable: the cost of
        #: one matters in a no-op drain)
        self._delivery: Delivery | None = None

    @property
    def delivery(self) -> Delivery | None:
        """The task being processed (its id, queue, attempt), while ``process()`` runs.

        With ``child_concurrency > 1`` each coroutine or thread sees its own task.
        """
        current = CURRENT_DELIVERY.get()
        return current if current is not None else self._delivery

    @classmethod
    def is_async(cls) -> bool:
        """Whether ``process`` is a coroutine function (``async def``)."""
        return inspect.iscoroutinefunction(cls.process)

    @classmethod
    def concurrency(cls) -> int:
        """Tasks a child runs at once: ``child_concurrency`` or its default."""
        if cls.child_concurrency is not None:
            return cls.child_concurrency
        return DEFAULT_ASYNC_CONCURRENCY if cls.is_async() else 1

    def setup(self) -> Any:
        """Called once per child process before the first task (open connections here).

        May be ``async def``: it then runs on the child's event loop, before any task.
        """

    def teardown(self) -> Any:
        """Called once per child process after the last task (may be ``async def``)."""

    def process(self, payload: Payload) -> Any:
        """Do the work of one task. Raise to have it retried. May be ``async def``."""
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
