"""``asynctask_command``: runs the command line of a ``command`` schedule entry.

The queue message carries only the entry's name; the command comes from this process's
own settings. So whoever can write to a queue can at most trigger a command the settings
already name: a command text in a message is never run (the original's ``ctl_executor``
ran any ``rex`` command found in a payload).
"""

from __future__ import annotations

import subprocess
from typing import Any

from asynctask.errors import ConfigurationError
from asynctask.settings import get_settings
from asynctask.worker import AsyncTaskWorker

#: characters of a failed command's output kept in the error
OUTPUT_TAIL = 2000


class CommandFailed(RuntimeError):
    """A scheduled command exited with a non-zero code."""


class CommandWorker(AsyncTaskWorker):
    """Runs the command of the schedule entry named by the payload's ``schedule``."""

    name = "asynctask_command"
    max_retries = 0
    dont_retry = (ConfigurationError,)

    def process(self, payload: dict[str, Any]) -> None:
        """Look the entry up in the settings and run its command (no shell)."""
        name = payload.get("schedule")
        entries = {e["name"]: e for e in get_settings().schedules if e.get("command")}
        entry = entries.get(name) if isinstance(name, str) else None
        if entry is None:
            raise ConfigurationError(
                f"no command schedule entry is named {name!r} in this process's settings; "
                f"known: {', '.join(sorted(entries)) or 'none'} (commands are never taken "
                "from a task's payload)"
            )
        command: list[str] = entry["command"]
        self.logger.info("Executing Task: %s", command)
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        output = (done.stdout + done.stderr).strip()
        if output:
            self.logger.info("%s", output)
        if done.returncode != 0:
            tail = output[-OUTPUT_TAIL:]
            self.logger.error("Failed execution of %s: exit code %d", command, done.returncode)
            raise CommandFailed(
                f"{command} exited with code {done.returncode}; output ends: {tail}"
            )
