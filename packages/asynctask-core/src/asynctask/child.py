"""A worker child process: ``python -P -m asynctask.child`` with its spec as JSON on stdin.

The supervisor starts each child as a fresh interpreter (no inherited threads or
connections). SIGTERM and SIGINT only ever ask a child to stop gracefully: it finishes
its current task, hands back the ones it had reserved ahead, and exits. A second signal
changes nothing, because ``kill -TERM -PGID`` (systemd's ``KillMode=control-group``)
reaches each child twice, once from the group and once from the supervisor; a stop at
once is the supervisor's SIGKILL (after the grace period, or on a second signal to the
supervisor). A child dies with its supervisor, even a SIGKILLed one.

The supervisor keeps the child's liveness (``asynctask.liveness``): the spec carries the
owner id, and the child tells the supervisor, over the pipe ``report_fd``, which tasks it
starts and settles (``asynctask.reports``), so that when the child dies only the task it
was running counts an attempt.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
import threading
from dataclasses import asdict, dataclass
from types import FrameType
from typing import Any

from asynctask import exitcodes
from asynctask.errors import ConfigurationError, TransportRefused, TransportUnavailable
from asynctask.limits import GlobalLimit, LimitSpec
from asynctask.logs import setup_logging
from asynctask.ratelimit import RateLimit
from asynctask.reports import ReportWriter
from asynctask.runner import (
    EXIT_RECYCLE,
    EXIT_TASK_TIMEOUT,
    LoopOptions,
    LoopResult,
    SetupFailed,
    serve,
)
from asynctask.settings import configure, settings_from_raw
from asynctask.syspath import working_folder_last

#: exit code of a child that found its supervisor gone
EXIT_FORCED = 70
_PR_SET_PDEATHSIG = 1


@dataclass
class ChildSpec:
    """Everything a child needs, sent as JSON."""

    queue: str
    worker: str
    settings: dict[str, Any]
    sources: dict[str, str]
    imports: list[str]
    parent_pid: int
    halt_when_empty: bool = False
    quiet: bool = False
    rate_max_calls: int | None = None
    rate_period: float | None = None
    #: "global": the rate is one budget in the backend (``asynctask.limits``)
    rate_scope: str = "child"
    #: tasks of the queue running at once on every host (``asynctask.limits``)
    max_running: int | None = None
    #: None: the worker class's own ``prefetch``
    prefetch: int | None = None
    #: how many times in a row this slot's child failed to start: after the first, a
    #: start failure is one line (its traceback was logged the first time)
    start_failures: int = 0
    #: a file where the child writes what it did (for the --halt-when-empty summary)
    summary_path: str | None = None
    #: the owner id whose liveness the supervisor keeps; None: the consumer keeps its own
    owner: str | None = None
    #: the write end of the pipe on which the child reports started and settled tasks
    report_fd: int | None = None
    #: tasks run at once; None: the worker class's own ``child_concurrency``
    child_concurrency: int | None = None
    #: keep task statuses; None: the worker class's own ``track_status``
    track_status: bool | None = None
    #: the supervisor's grace period (seconds running tasks get when a child is replaced)
    grace: float = 30.0

    def to_json(self) -> str:
        """The spec as JSON text."""
        return json.dumps(asdict(self))


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass

    # Belt and braces (other systems, or a parent that died before prctl): watch it.
    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(EXIT_FORCED)
            threading.Event().wait(1.0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    if os.getppid() != parent_pid:
        os._exit(EXIT_FORCED)


def main() -> int:
    """Run one worker on one queue until told to stop; return the exit code."""
    working_folder_last()  # started with -P: the folder is searched, last
    spec = ChildSpec(**json.loads(sys.stdin.read()))
    _die_with_parent(spec.parent_pid)
    setup_logging(spec.quiet)
    log = logging.getLogger("asynctask.child")
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()  # never "at once": that is the supervisor's SIGKILL

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    report = ReportWriter(spec.report_fd)

    from asynctask.api import get_transport
    from asynctask.plugins import load_plugins

    try:
        settings = settings_from_raw(spec.settings, spec.sources)
        configure(settings)
        registry = load_plugins([*settings.imports, *spec.imports])
        worker = registry.worker_class(spec.worker)()
        transport = get_transport()
    except (ConfigurationError, TransportRefused) as exc:
        # Restarting cannot cure bad settings or a backend that refuses us.
        log.error("Cannot start worker %s on queue %s: %s", spec.worker, spec.queue, exc)
        return exitcodes.CHILD_PERMANENT
    except Exception as exc:
        _start_failed(log, spec, "could not load", exc)
        return exitcodes.CHILD_START_FAILED
    rate, limit = None, None
    glob = spec.rate_scope == "global"
    if spec.rate_max_calls is not None and spec.rate_period is not None and not glob:
        rate = RateLimit(spec.rate_max_calls, spec.rate_period, spec.queue)
    if glob or spec.max_running is not None:
        rates = (spec.rate_max_calls, spec.rate_period) if glob else (None, None)
        limit = GlobalLimit(transport, spec.queue, LimitSpec(*rates, spec.max_running), spec.owner)
    options = LoopOptions(
        halt_when_empty=spec.halt_when_empty,
        wait=settings.poll_interval,
        rate=rate,
        limit=limit,
        prefetch=spec.prefetch or worker.prefetch or transport.default_prefetch,
        max_tasks=worker.max_tasks_per_child,
        stop=stop,
        on_timeout=lambda: _exit_reported(report, EXIT_TASK_TIMEOUT),
        on_start=report.started,
        on_settled=report.settled,
        on_unstarted=report.unstarted,
        on_idle=report.flush,
        owner=spec.owner,
        child_concurrency=spec.child_concurrency,
        track_status=spec.track_status,
        grace=spec.grace,
    )
    worker.logger.info("Starting; queue=%s", spec.queue)
    try:
        # setup(), the run loop, teardown(): on the event loop for an async worker
        result = serve(worker, transport, spec.queue, options)
    except SetupFailed as exc:
        _start_failed(log, spec, "setup() raised", exc.error)
        return exitcodes.CHILD_START_FAILED
    except (TransportRefused, TransportUnavailable) as exc:
        # One line, not a traceback. A refusal (or, under --halt-when-empty, an outage
        # past retry_timeout) makes the supervisor stop every child; an outage otherwise
        # is a death like another: the child is restarted with back-off.
        log.error("Worker %s on queue %s stopped: %s", spec.worker, spec.queue, exc)
        if isinstance(exc, TransportUnavailable) and not spec.halt_when_empty:
            return 1
        return exitcodes.child_code_for(exc)
    finally:
        transport.close()
    _write_summary(spec, result)
    worker.logger.info("Terminating")
    return EXIT_RECYCLE if result.recycled else 0


def _exit_reported(report: ReportWriter, code: int) -> None:
    """Exit at once (a task past its timeout), after the settle lines still held
    (``ReportWriter``): without them the supervisor counts those finished tasks as
    started, unsettled, and charges them an attempt."""
    try:
        report.flush()
    finally:
        os._exit(code)


def _start_failed(log: logging.Logger, spec: ChildSpec, what: str, exc: BaseException) -> None:
    """The first start failure with its traceback; later ones (a crash loop) in one line."""
    message = f"Worker {spec.worker} on queue {spec.queue} {what}: {type(exc).__name__}: {exc}"
    if spec.start_failures == 0:
        log.error("%s", message, exc_info=exc)
    else:
        log.error("%s (again; traceback above, at its first failure)", message)


def _write_summary(spec: ChildSpec, result: LoopResult) -> None:
    """Tell the supervisor what this child did (best effort: a summary, not a ledger)."""
    if spec.summary_path is None:
        return
    report = {"queue": spec.queue, "processed": result.processed, "succeeded": result.succeeded}
    with contextlib.suppress(OSError), open(spec.summary_path, "a") as file:
        file.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    sys.exit(main())
