"""The hook implementations: carry the trace context at submit, a span per run.

At submit, the W3C ``traceparent`` (and ``tracestate``) of the caller's current span goes
into the task's headers; nothing is added when there is no current span. In the worker,
each attempt runs in a span ``asynctask.run <queue>`` (kind CONSUMER) whose parent is that
context, with the attributes ``asynctask.queue``, ``asynctask.worker``, ``asynctask.task_id``,
``asynctask.attempt`` and ``asynctask.outcome``; an exception is recorded on it and sets
its status to ERROR. The span is current while ``process()`` runs, so the worker's own
spans (an HTTP client's, a database driver's) are its children.

Only the OpenTelemetry API is used: without an SDK configured by the application the
spans are no-ops that cost next to nothing.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from opentelemetry import context, trace

from asynctask import NotListening, hookimpl

if TYPE_CHECKING:
    from opentelemetry.trace import Span

TRACER_NAME = "asynctask"
#: the headers of the W3C Trace Context propagation format
W3C_HEADERS = ("traceparent", "tracestate")

#: the open span and its context token of each running attempt, by (queue, task id)
_running: dict[tuple[str, str], tuple[Span, object]] = {}
_lock = threading.Lock()


#: whether an SDK tracer provider was found, and when the API was last asked (monotonic)
_sdk = False
_asked_at = -math.inf
#: seconds between two questions while no SDK is configured
RECHECK = 1.0


def _sdk_configured() -> bool:
    """Whether an SDK tracer provider is set in this process.

    The API is asked at most once a second while the answer is no: its answer costs
    about 3 us (it looks for ``OTEL_PYTHON_TRACER_PROVIDER`` in ``os.environ``, a
    ``KeyError`` raised and caught when it is absent), a third of a no-op task's own run
    loop. A provider set at start-up or in ``setup()`` is seen by the first task; one set
    later, within a second. Once set it stays (the API allows one ``set_tracer_provider``).
    """
    global _sdk, _asked_at
    if _sdk:
        return True
    now = time.monotonic()
    if now - _asked_at < RECHECK:
        return False
    _asked_at = now
    _sdk = not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    return _sdk


@hookimpl
def asynctask_submit_headers(queue: str) -> dict[str, str] | None:
    """The caller's trace context, as W3C headers (None outside any span)."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return {k: v for k, v in carrier.items() if k in W3C_HEADERS} or None


@hookimpl
def asynctask_task_started(
    queue: str, worker: str, task_id: str, attempt: int, headers: Mapping[str, str]
) -> None:
    """Start the run's span, child of the submit's context, and make it current.

    With no SDK configured in this process a span would be a no-op (8 us a task): this
    plugin's task hooks are then paused for ``RECHECK`` seconds (``NotListening``), so a
    no-op drain does not call them at all meanwhile, and the first task after asks again.
    """
    if not _sdk_configured():
        raise NotListening(recheck=RECHECK)
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = TraceContextTextMapPropagator().extract(
        {k: v for k, v in headers.items() if k in W3C_HEADERS}
    )
    span = trace.get_tracer(TRACER_NAME).start_span(
        f"asynctask.run {queue}",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "asynctask.queue": queue,
            "asynctask.worker": worker,
            "asynctask.task_id": task_id,
            "asynctask.attempt": attempt,
            "messaging.system": "asynctask",
            "messaging.destination.name": queue,
            "messaging.message.id": task_id,
        },
    )
    token = context.attach(trace.set_span_in_context(span))
    with _lock:
        _running[(queue, task_id)] = (span, token)


@hookimpl
def asynctask_task_finished(
    queue: str, task_id: str, outcome: str, error: BaseException | None
) -> None:
    """End the run's span with its outcome and exception."""
    if not _running:
        return  # no span open in this process (no SDK): no lock to take
    with _lock:
        found = _running.pop((queue, task_id), None)
    if found is None:
        return  # it never started here (a delivery past its last attempt)
    span, token = found
    span.set_attribute("asynctask.outcome", outcome)
    if error is not None:
        span.record_exception(error)
        span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    # settled from another thread (a timeout watchdog): nothing to restore there
    with contextlib.suppress(ValueError):
        context.detach(token)  # type: ignore[arg-type]
    span.end()
