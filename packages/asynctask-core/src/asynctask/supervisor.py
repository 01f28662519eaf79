"""The supervisor of ``asynctask workers``: one child process per queue slot.

It starts every child, restarts one that dies (with back-off, so a child that keeps
dying at start-up does not spin the CPU), and stops them all on SIGTERM or SIGINT: the
first signal lets each child finish its current task within the grace period, the
second (or the end of the grace period) kills them, and the command then exits 4, never
0. Signal handlers only set flags; the work happens in the loop, which wakes on a child's
exit or a signal at once.

It also keeps its children's liveness (``asynctask.liveness``): each child start gets a
new owner id, a keeper thread (``asynctask.keepers``) beats for it while the child's
pidfd says it lives, and when the child exits its tasks go back at once, counting an
attempt only for the one it had started (the child reports starts and settles on a pipe).

A crash loop is a child that dies, again and again, before it settles a single task:
its worker cannot start (an import, ``setup()``), or every task kills it (``os._exit``, a
segfault, the OOM killer). The pipe tells the supervisor how many tasks a dead child
settled; each death with none settled adds one to the slot's count, a child that settled
one resets it, and under ``--halt-when-empty`` the fifth in a row ends the command with
exit 5 instead of restarting forever.

And it stops cancelled tasks (DESIGN.md section 6): a thread (``asynctask.cancels``) looks
at the statuses of the tasks its children run; when one was cancelled, its child is
asked to stop (SIGTERM: it starts nothing new) and killed ``CANCEL_GRACE`` seconds later
if the task still runs, then replaced at once. The task is not retried: its reservation
comes back, and the next ``start()`` drops it as cancelled. Other tasks the child ran at
once (``child_concurrency``) and that did not end within the grace count an attempt, as
when a timeout replaces a child.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import FrameType

from asynctask import events, exitcodes
from asynctask.cancels import CancelWatch
from asynctask.child import EXIT_FORCED, ChildSpec
from asynctask.keepers import Keepers
from asynctask.liveness import Liveness, new_owner
from asynctask.reports import ReportReader
from asynctask.runner import EXIT_RECYCLE, EXIT_TASK_TIMEOUT
from asynctask.transport import Transport

logger = logging.getLogger("asynctask.supervisor")

#: exit codes of the ``asynctask workers`` command
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_FORCED_STOP = 4

BACKOFF_FIRST = 0.2
BACKOFF_MAX = 30.0
#: a child that ran this long before it died starts again after the first back-off
HEALTHY_RUN = 30.0
#: seconds a child running a cancelled task gets before it is killed and replaced
CANCEL_GRACE = 0.3


@dataclass
class Slot:
    """One child to keep running: a queue, its worker, and the state of its process."""

    spec: ChildSpec
    label: str
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    #: deaths in a row of a child that could not start its worker (after the first, the
    #: child logs its error in one line: the traceback was logged the first time)
    start_failures: int = 0
    #: deaths in a row of a child that settled no task (a crash loop, whatever its cause)
    fruitless_deaths: int = 0
    #: tasks the last child settled before it ended; None: it had no report to tell
    settled: int | None = None
    restart_at: float | None = None
    done: bool = False
    pidfd: int | None = field(default=None, repr=False)
    #: the liveness the supervisor keeps for the running child
    liveness: Liveness | None = field(default=None, repr=False)
    #: what the running child reported about its tasks
    report: ReportReader | None = field(default=None, repr=False)
    #: when the child, running a cancelled task, is killed (None: it is not)
    cancel_kill_at: float | None = None
    #: the cancelled tasks it runs (for the log)
    cancelled: frozenset[str] = frozenset()


class Supervisor:
    """Runs the slots until they halt (``halt_when_empty``) or a signal stops them."""

    def __init__(
        self,
        specs: list[ChildSpec],
        check_interval: float = 1.0,
        grace: float = 30.0,
        halt_when_empty: bool = False,
        on_stop: Callable[[], None] | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.slots = [Slot(spec, f"{spec.worker} on queue {spec.queue}") for spec in specs]
        self.check_interval = check_interval
        self.grace = grace
        self.halt_when_empty = halt_when_empty
        self.on_stop = on_stop
        self._signals = 0
        self._stop_deadline: float | None = None
        self._forced = False
        #: set when a child's exit stops every child (a permanent error, a crash loop)
        self._exit_code: int | None = None
        #: the children's transport, for their liveness; None: children keep their own
        self.transport = transport
        self._keepers: Keepers | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self._cancels: CancelWatch | None = None
        if transport is not None and any(s.track_status is not False for s in specs):
            self._cancels = CancelWatch(transport, self._wake)

    # -- children ---------------------------------------------------------------------

    def _start(self, slot: Slot) -> None:
        logger.info("Launching %s", slot.label)
        slot.spec.start_failures = slot.start_failures
        spec = self._keep_alive(slot)
        try:
            process = subprocess.Popen(
                # -P: nothing from the working folder shadows a module (asynctask.syspath)
                [sys.executable, "-P", "-m", "asynctask.child"],
                stdin=subprocess.PIPE,
                close_fds=True,
                pass_fds=() if slot.report is None else (slot.report.write_fd,),
            )
        finally:
            if slot.report is not None:
                slot.report.close_write_end()
        assert process.stdin is not None
        try:
            process.stdin.write(spec.to_json().encode())
            process.stdin.close()
        except BrokenPipeError:
            # It died before reading its spec (killed at birth): reaped and restarted
            # like any child that dies, instead of ending the supervisor.
            with contextlib.suppress(OSError):
                process.stdin.close()
        events.child_event(
            slot.spec.queue, "restarted" if slot.started else "started", process.pid, None
        )
        slot.process = process
        slot.started = time.monotonic()
        slot.restart_at = None
        slot.pidfd = _pidfd(process.pid)

    def _keep_alive(self, slot: Slot) -> ChildSpec:
        """The spec of a new child of ``slot``, its liveness kept and its report open.

        A new owner id per child start: a restarted child never inherits a dead one's
        tasks, which ``end()`` hands back when the dead one is reaped.
        """
        if self.transport is None:
            return slot.spec
        owner = new_owner()
        slot.liveness = self.transport.liveness(
            slot.spec.queue, owner, holds_slots=slot.spec.max_running is not None
        )
        if self._keepers is None:
            self._keepers = Keepers()
        self._keepers.keep(slot.liveness)
        slot.report = ReportReader()
        return replace(slot.spec, owner=owner, report_fd=slot.report.write_fd)

    def _reap(self, slot: Slot) -> int | None:
        """The exit code of the slot's process if it has ended, else None."""
        if slot.process is None:
            return None
        code = slot.process.poll()
        if code is None:
            return None
        events.child_event(slot.spec.queue, "exited", slot.process.pid, code)
        if slot.pidfd is not None:
            os.close(slot.pidfd)
            slot.pidfd = None
        slot.process = None
        self._end_liveness(slot)
        return code

    def _end_liveness(self, slot: Slot) -> None:
        """The child is gone: its tasks go back now, only the started ones counted."""
        report, slot.report = slot.report, None
        running: set[str] = set()
        finished: set[str] = set()
        slot.settled = None
        if report is not None:
            report.read()  # what it wrote before it died is still in the pipe
            report.close()
            running, finished = report.running, set(report.finished)
            slot.settled = report.settled
        if slot.liveness is not None and self._keepers is not None:
            self._keepers.end(slot.liveness, running, finished)
        slot.liveness = None

    def _after_exit(self, slot: Slot, code: int, now: float) -> None:
        replacing, slot.cancel_kill_at = slot.cancel_kill_at is not None, None
        if self._stop_deadline is not None:
            slot.done = True
            return
        if replacing:
            logger.info(
                "%s replaced: it ran the cancelled task %s (%s)",
                slot.label,
                ", ".join(sorted(slot.cancelled)),
                _describe_exit(code),
            )
            slot.failures = 0
            slot.restart_at = now
            return
        if code == 0 and self.halt_when_empty:
            slot.done = True
            logger.info("%s halted: its queue is empty", slot.label)
            return
        if code in (exitcodes.CHILD_PERMANENT, exitcodes.CHILD_UNAVAILABLE):
            slot.done = True
            why = "a permanent error" if code == exitcodes.CHILD_PERMANENT else "an outage"
            logger.error("%s stopped on %s (logged above); stopping every worker", slot.label, why)
            self._give_up(
                exitcodes.USAGE if code == exitcodes.CHILD_PERMANENT else exitcodes.UNAVAILABLE,
                now,
            )
            return
        slot.start_failures = slot.start_failures + 1 if code == exitcodes.CHILD_START_FAILED else 0
        if _fruitless(code, slot.settled):
            slot.fruitless_deaths += 1
        else:
            slot.fruitless_deaths = 0
        if self.halt_when_empty and slot.fruitless_deaths >= exitcodes.CRASH_LOOP_LIMIT:
            slot.done = True
            logger.error(
                "%s %s %d times in a row before finishing a task; giving up (--halt-when-empty)",
                slot.label,
                "could not start"
                if code == exitcodes.CHILD_START_FAILED
                else f"died ({_describe_exit(code)})",
                slot.fruitless_deaths,
            )
            self._give_up(exitcodes.CRASH_LOOP, now)
            return
        if code in (EXIT_RECYCLE, EXIT_TASK_TIMEOUT):
            why = (
                "recycled after max_tasks_per_child"
                if code == EXIT_RECYCLE
                else "stopped a task past its timeout"
            )
            logger.info("%s %s; starting a new one", slot.label, why)
            slot.restart_at = now
            return
        ran = now - slot.started
        if ran >= HEALTHY_RUN or code < 0:
            # A child killed by a signal from outside (an operator, the OOM killer) is not
            # a crash loop: it starts again after the first, short back-off.
            slot.failures = 1
        else:
            slot.failures += 1
        delay = min(BACKOFF_FIRST * 2 ** (slot.failures - 1), BACKOFF_MAX)
        slot.restart_at = now + delay
        if code == exitcodes.CHILD_START_FAILED:
            logger.error(
                "Worker for queue %s could not start (%d in a row); restarting in %.1f s",
                slot.spec.queue,
                slot.start_failures,
                delay,
            )
        elif slot.fruitless_deaths:
            logger.error(
                "Worker for queue %s died (%s) before finishing a task (%d in a row); "
                "restarting in %.1f s",
                slot.spec.queue,
                _describe_exit(code),
                slot.fruitless_deaths,
                delay,
            )
        else:
            logger.error(
                "Worker for queue %s died (%s); restarting in %.1f s",
                slot.spec.queue,
                _describe_exit(code),
                delay,
            )

    # -- signals ----------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        self._wake()

    def _wake(self) -> None:
        """Wake the loop (from a signal handler or another thread)."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"s")

    # -- cancelled tasks --------------------------------------------------------------

    def _watch_cancels(self, now: float) -> None:
        """Publish what runs; replace the children running a task found cancelled."""
        watch = self._cancels
        if watch is None:
            return
        found = watch.take()
        running: dict[int, frozenset[str]] = {}
        for index, slot in enumerate(self.slots):
            report = slot.report
            if report is None or slot.process is None or slot.spec.track_status is False:
                continue
            ids = frozenset(report.running)
            running[index] = ids
            hit = ids & found
            if hit and slot.cancel_kill_at is None and self._stop_deadline is None:
                logger.warning(
                    "Task %s was cancelled while it ran; replacing its child (pid %d) of %s "
                    "in %g s; the task is not retried",
                    ", ".join(sorted(hit)),
                    slot.process.pid,
                    slot.label,
                    CANCEL_GRACE,
                )
                slot.cancelled = hit
                slot.cancel_kill_at = now + CANCEL_GRACE
                self._send(slot, signal.SIGTERM)  # it starts nothing new meanwhile
            if slot.cancel_kill_at is not None and now >= slot.cancel_kill_at:
                self._send(slot, signal.SIGKILL)
        watch.watch(running)

    def _give_up(self, code: int, now: float) -> None:
        """Stop every child as a first signal would, and end with exit code ``code``."""
        if self._exit_code is None:
            self._exit_code = code
        self._begin_stop(now)

    def _begin_stop(self, now: float) -> None:
        if self._stop_deadline is not None:
            return
        self._stop_deadline = now + self.grace
        if self.on_stop is not None:
            self.on_stop()
        for slot in self.slots:
            slot.restart_at = None
            self._send(slot, signal.SIGTERM)

    def _handle_signals(self, now: float) -> None:
        if self._signals == 0:
            return
        if self._stop_deadline is None:
            logger.info(
                "Termination received; children finish their current task (grace %g s)", self.grace
            )
            self._begin_stop(now)
        if self._signals >= 2 and not self._forced:
            logger.warning("Second termination signal; stopping children at once")
            self._kill_all()
            self._forced = True

    def _kill_all(self) -> bool:
        """SIGKILL every live child; whether there was one."""
        killed = False
        for slot in self.slots:
            killed = self._send(slot, signal.SIGKILL) or killed
        return killed

    @staticmethod
    def _send(slot: Slot, signum: int) -> bool:
        if slot.process is not None and slot.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                slot.process.send_signal(signum)
                return True
        return False

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> int:
        """Supervise until every child is done; return the command's exit code."""
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for slot in self.slots:
                self._start(slot)
            while True:
                now = time.monotonic()
                self._handle_signals(now)
                for slot in self.slots:
                    code = self._reap(slot)
                    if code is not None:
                        self._after_exit(slot, code, now)
                    if (
                        slot.process is None
                        and not slot.done
                        and slot.restart_at is not None
                        and slot.restart_at <= now
                        and self._stop_deadline is None
                    ):
                        self._start(slot)
                    if slot.process is None and self._stop_deadline is not None:
                        slot.done = True
                if all(slot.done for slot in self.slots):
                    break
                self._watch_cancels(now)
                if (
                    self._stop_deadline is not None
                    and now >= self._stop_deadline
                    and not self._forced
                ):
                    logger.warning(
                        "Grace period of %g s is over; stopping children at once", self.grace
                    )
                    self._forced = self._kill_all()
                    if not self._forced:  # all exited meanwhile: nothing was cut short
                        self._stop_deadline = now + self.grace
                self._wait(now)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self._kill_all()
            for slot in self.slots:
                if slot.process is not None:
                    slot.process.wait()
                    slot.process = None
                self._end_liveness(slot)
            if self._keepers is not None:
                self._keepers.close()
            if self._cancels is not None:
                self._cancels.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
        if self._stop_deadline is None:
            logger.info("All workers halted; closing down...")
        if self._exit_code is not None:  # a permanent error or a crash loop stopped all
            logger.info("Complete")
            return self._exit_code
        if self._forced:
            logger.warning("Children were stopped at once; their tasks come back to the queue")
            return EXIT_FORCED_STOP
        logger.info("Complete")
        return EXIT_OK

    def _wait(self, now: float) -> None:
        """Sleep until a child exits, a signal arrives, a restart is due or a check is."""
        timeout = self.check_interval
        for slot in self.slots:
            if slot.restart_at is not None and slot.process is None:
                timeout = min(timeout, max(0.0, slot.restart_at - now))
        if self._stop_deadline is not None:
            timeout = min(timeout, max(0.0, self._stop_deadline - now))
        for slot in self.slots:
            if slot.cancel_kill_at is not None:
                timeout = min(timeout, max(0.0, slot.cancel_kill_at - now))
        fds = [self._wake_r] + [s.pidfd for s in self.slots if s.pidfd is not None]
        # A report is read at most every read_every seconds (the child's pipe holds what
        # it writes meanwhile); a child's exit still wakes the loop at once, by its pidfd.
        now = time.monotonic()
        for slot in self.slots:
            report = slot.report
            if report is None or report.fd is None:
                continue
            if report.read_at <= now:
                fds.append(report.fd)
            else:
                timeout = min(timeout, report.read_at - now)
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:
            return
        for slot in self.slots:
            if slot.report is not None and slot.report.fd in ready:
                slot.report.read()
        if self._wake_r in ready:
            try:
                while os.read(self._wake_r, 64):
                    pass
            except BlockingIOError:
                pass


def _pidfd(pid: int) -> int | None:
    # A pidfd becomes readable when the process exits: we wake at once, without polling.
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        fd: int = pidfd_open(pid)
        return fd
    except OSError:
        return None


def _fruitless(code: int, settled: int | None) -> bool:
    """Whether a child that ended with ``code`` died before finishing a task.

    A recycled child and one replaced for a task's timeout did what was asked of them;
    a child without a report (no liveness kept for it) is judged by its start only.
    """
    if code == exitcodes.CHILD_START_FAILED:
        return True
    if code in (0, EXIT_RECYCLE, EXIT_TASK_TIMEOUT) or settled is None:
        return False
    return settled == 0


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if code == EXIT_FORCED:
        return "stopped at once"
    return f"exit code {code}"
