"""Hiding passwords from ``ps``: the command line a process shows to every local user.

``asynctask workers --set asynctask_transport=amqp://app:pw@host/`` puts the password in
``/proc/PID/cmdline``, which any local user can read. Python cannot change its argv, so
the maintained ``setproctitle`` library rewrites it as the command starts, with every
password replaced by ``***``. Until that moment (the interpreter's start, tens of
milliseconds) the password is visible: the settings file or the environment
(``ASYNCTASK_TRANSPORT``, readable by the same user and root only) are the safe ways.
Children never get a password on their command line: their settings come on stdin.
"""

from __future__ import annotations

import shlex
import sys

from asynctask.uri import redact


def hide_passwords() -> None:
    """Show this process's command line to ``ps`` with its passwords hidden."""
    shown = shlex.join(["asynctask", *sys.argv[1:]])
    hidden = redact(shown)
    if hidden == shown:
        return
    import setproctitle

    setproctitle.setproctitle(hidden)
