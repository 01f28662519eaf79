"""A worker child process: ``python -m asynctask.child`` with its spec as JSON on stdin.

The supervisor starts each child as a fresh interpreter (no inherited threads or
connections). A child stops gracefully on its first SIGTERM (after the current task),
at once on the second, ignores SIGINT (the supervisor decides what a Ctrl-C means), and
dies with its supervisor, even a SIGKILLed one.
"""

from __future__ import annotations

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

from asynctask.errors import AsynctaskError
from asynctask.logs import setup_logging
from asynctask.ratelimit import RateLimit
from asynctask.runner import EXIT_RECYCLE, EXIT_TASK_TIMEOUT, LoopOptions, serve
from asynctask.settings import configure, settings_from_raw

#: exit code of a child stopped by a second SIGTERM
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
    #: None: the worker class's own ``prefetch``
    prefetch: int | None = None
    #: tasks run at once; None: the worker class's own ``child_concurrency``
    child_concurrency: int | None = None
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
    spec = ChildSpec(**json.loads(sys.stdin.read()))
    _die_with_parent(spec.parent_pid)
    setup_logging(spec.quiet)
    log = logging.getLogger("asynctask.child")
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            os._exit(EXIT_FORCED)
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    from asynctask.api import get_transport
    from asynctask.plugins import load_plugins

    try:
        settings = settings_from_raw(spec.settings, spec.sources)
        configure(settings)
        registry = load_plugins([*settings.imports, *spec.imports])
        worker = registry.worker_class(spec.worker)()
        transport = get_transport()
    except AsynctaskError as exc:
        log.error("Cannot start worker %s on queue %s: %s", spec.worker, spec.queue, exc)
        return 1
    rate = None
    if spec.rate_max_calls is not None and spec.rate_period is not None:
        rate = RateLimit(spec.rate_max_calls, spec.rate_period, spec.queue)
    options = LoopOptions(
        halt_when_empty=spec.halt_when_empty,
        wait=settings.poll_interval,
        rate=rate,
        prefetch=spec.prefetch or worker.prefetch,
        max_tasks=worker.max_tasks_per_child,
        stop=stop,
        on_timeout=lambda: os._exit(EXIT_TASK_TIMEOUT),
        child_concurrency=spec.child_concurrency,
        grace=spec.grace,
    )
    worker.logger.info("Starting; queue=%s", spec.queue)
    try:
        result = serve(worker, transport, spec.queue, options)
    finally:
        transport.close()
    worker.logger.info("Terminating")
    return EXIT_RECYCLE if result.recycled else 0


if __name__ == "__main__":
    sys.exit(main())
