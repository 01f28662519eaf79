"""``asynctask_command``: runs the command line of a ``command`` schedule entry.

The queue message carries only the entry's name; the command comes from this process's
own settings, and only the entry that owns the scheduled queue the task came from may
run. So whoever can write to a queue can at most trigger, early, the one command that
queue exists for: a command text in a message is never run (the original's
``ctl_executor`` ran any ``rex`` command found in a payload), and a message naming
another entry is refused.

A command runs without a shell, for at most its entry's ``timeout`` (default one hour),
without this process's ``ASYNCTASK_*`` variables (they may hold the transport URI with
its password) unless its entry lists them in ``env``; its output is kept in memory and
in the log as a bounded tail only.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections import deque
from typing import IO, Any

from asynctask.errors import ConfigurationError
from asynctask.settings import get_settings
from asynctask.worker import AsyncTaskWorker

#: characters of a command's output kept: in the log, and in a failed task's error
OUTPUT_TAIL = 4000
#: bytes of output a command may print before its head is dropped (only the tail is kept)
_KEEP_BYTES = 64 * 1024


class CommandFailed(RuntimeError):
    """A scheduled command exited with a non-zero code, or ran past its timeout."""


class CommandWorker(AsyncTaskWorker):
    """Runs the command of the schedule entry that owns the queue the task came from."""

    name = "asynctask_command"
    max_retries = 0
    dont_retry = (ConfigurationError,)

    def process(self, payload: dict[str, Any]) -> None:
        """Look the queue's entry up in the settings and run its command (no shell)."""
        entry = self._entry(payload.get("schedule"))
        command: list[str] = entry["command"]
        self.logger.info("Executing Task: %s", command)
        code, output = run_command(command, entry["timeout"], command_environment(entry["env"]))
        if output:
            self.logger.info("%s", output[-OUTPUT_TAIL:])
        if code is None:
            self.logger.error("%s ran past its timeout of %g s; stopped", command, entry["timeout"])
            raise CommandFailed(
                f"{command} ran past its timeout of {entry['timeout']:g} s (the entry's "
                f"'timeout') and was stopped; output ends: {output[-OUTPUT_TAIL:]}"
            )
        if code != 0:
            self.logger.error("Failed execution of %s: exit code %d", command, code)
            raise CommandFailed(
                f"{command} exited with code {code}; output ends: {output[-OUTPUT_TAIL:]}"
            )

    def _entry(self, name: object) -> dict[str, Any]:
        queue = self._queue_name
        entries = [e for e in get_settings().schedules if e.get("command")]
        owner = next((e for e in entries if e["queue"] == queue), None)
        if owner is None:
            raise ConfigurationError(
                f"no command schedule entry owns the queue {queue!r} in this process's "
                f"settings; command entries: {', '.join(e['name'] for e in entries) or 'none'}"
            )
        if name != owner["name"]:
            raise ConfigurationError(
                f"a task on {queue!r} names the schedule {name!r}, but that queue belongs to "
                f"the entry {owner['name']!r}: a queue runs only its own entry's command "
                "(commands are never taken from a task's payload)"
            )
        return owner


def command_environment(listed: list[str]) -> dict[str, str]:
    """This process's environment without ``ASYNCTASK_*`` variables, except ``listed``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTASK_") or k in listed}


def run_command(command: list[str], timeout: float, env: dict[str, str]) -> tuple[int | None, str]:
    """Run ``command``; return its exit code (None: stopped at ``timeout``) and the tail
    of its output (stdout and stderr together), never holding more than a bounded tail."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
    )
    assert process.stdout is not None
    tail: deque[bytes] = deque()
    reader = threading.Thread(target=_keep_tail, args=(process.stdout, tail), daemon=True)
    reader.start()
    try:
        code: int | None = process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        code = None
    reader.join(5)
    process.stdout.close()
    text = b"".join(tail).decode("utf-8", errors="replace").strip()
    return code, text


def _keep_tail(stream: IO[bytes], tail: deque[bytes]) -> None:
    kept = 0
    while chunk := stream.read1(16384):  # type: ignore[attr-defined]
        tail.append(chunk)
        kept += len(chunk)
        while kept - len(tail[0]) >= _KEEP_BYTES:
            kept -= len(tail.popleft())
