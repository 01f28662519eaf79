"""A running ``asynctask workers`` command: 4 children on the chaos queue, and its pids.

The children find ``chaos.workers`` through ``PYTHONPATH`` (the repository root) and the
ledger through ``$CHAOS_LEDGER``. Its log (stderr) goes to a file kept with the run.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import IO

from asynctask.testing import FAST_CHECKS, clean_environment, workers_command
from chaos.hosts import Namespace, inner_pid
from chaos.ledger import LEDGER_VARIABLE

ROOT = Path(__file__).resolve().parents[1]
WORKER = "chaos_task"
CONCURRENCY = 4
GRACE = 10.0
#: what a child logs once its worker is set up, before it takes its first task
STARTED = "Starting; queue="


class Workers:
    """One ``asynctask workers`` process; ``stop()`` always leaves no process behind."""

    def __init__(
        self,
        uri: str,
        queue: str,
        ledger: Path,
        log: Path,
        *,
        concurrency: int = CONCURRENCY,
        prefetch: int | None = None,
        own_group: bool = False,
        host: Namespace | None = None,
        options: dict[str, object] | None = None,
    ) -> None:
        """``host``: run it inside that host's namespaces (``chaos.hosts``); ``options``:
        more keys of the queue's entry (``max_running``...)."""
        entry: dict[str, object] = {"worker": WORKER, "concurrency": concurrency, **(options or {})}
        if prefetch is not None:
            entry["prefetch"] = prefetch
        command = workers_command(
            uri,
            {queue: entry},
            "--import", "chaos.workers", "--grace", str(GRACE),
            settings=FAST_CHECKS,
        )  # fmt: skip
        env = clean_environment(**{LEDGER_VARIABLE: str(ledger)})
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        self.log = log
        self._log: IO[bytes] = open(log, "ab")  # noqa: SIM115 -- closed in stop()
        self.concurrency = concurrency
        # own_group: the leader of a process group of its own, as systemd starts a service
        if host is None:
            self.process = subprocess.Popen(
                command,
                stdout=self._log,
                stderr=self._log,
                cwd=ledger.parent,
                env=env,
                start_new_session=own_group,
            )
            #: the supervisor's pid (here)
            self.pid = self.process.pid
        else:
            # nsenter forks the command and waits for it (its exit code is the
            # command's), but passes no signal on: signals go to the command itself
            self.process = host.popen(
                command, stdout=self._log, stderr=self._log, cwd=ledger.parent, env=env
            )
            self.pid = inner_pid(self.process)
        self.started = time.time()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait (bounded) until every child has started its worker (its log says so)."""
        deadline = time.monotonic() + timeout
        while self.log.read_text(errors="replace").count(STARTED) < self.concurrency:
            if not self.alive():
                raise RuntimeError(f"asynctask workers exited ({self.process.returncode})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the workers did not all start within {timeout:g} s")
            time.sleep(0.05)

    def children(self) -> list[int]:
        """Pids of the live children."""
        pid = self.pid
        try:
            text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def kill_random_child(self, rng: random.Random, wait: float = 5.0) -> int | None:
        """SIGKILL one live child, picked at random; wait (bounded) for one if none is up."""
        deadline = time.monotonic() + wait
        while not (pids := self.children()):
            if time.monotonic() > deadline or self.process.poll() is not None:
                return None
            time.sleep(0.05)
        victim = rng.choice(pids)
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
        return victim

    def alive(self) -> bool:
        """Whether the supervisor still runs."""
        return self.process.poll() is None

    def terminate(self, timeout: float = GRACE + 10) -> int:
        """SIGTERM, as an operator would: children finish their task; return the exit code."""
        self._signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self.stop()

    def _signal(self, number: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, number)

    def stop(self) -> None:
        """Stop it (gracefully if it listens), and make sure no child is left."""
        if self.process.poll() is None:
            children = self.children()
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(GRACE + 5)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.kill()
                self.process.wait()
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if not self._log.closed:
            self._log.close()
