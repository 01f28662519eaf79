"""Exit codes: the one table of DESIGN.md section 4, for every command, and the codes a
worker child uses to tell its supervisor why it ended.

Commands (what a script sees):

====  ==============================================================================
0     done
1     the outcome asked for was not obtained (an id not found; failed tasks under
      ``--halt-when-empty --fail-on-failed``)
2     bad usage or settings, or a permanent backend error (wrong credentials, unknown
      database, vhost or schema, refused TLS)
3     the backend stayed unreachable past ``retry_timeout``
4     stopped at once by a second signal, or a forced stop
5     a child died 5 times in a row before finishing a task (``--halt-when-empty``)
70    an unexpected error (a bug: the message asks for a report)
124   ``wait`` timed out
====  ==============================================================================

Children (read by the supervisor, never seen by a script): 70 is a child stopped at
once (``asynctask.child.EXIT_FORCED``), 75 recycled, 76 a task past its timeout (both in
``asynctask.runner``), and the three below. They sit in the 64-113 range that Python and
the shell leave alone.
"""

from __future__ import annotations

from asynctask.errors import (
    AsynctaskError,
    TransportRefused,
    TransportUnavailable,
)

OK = 0
NOT_OBTAINED = 1
USAGE = 2
UNAVAILABLE = 3
FORCED = 4
CRASH_LOOP = 5
SOFTWARE = 70
WAIT_TIMEOUT = 124

#: a child could not start its worker (an import, setup(), the transport): it finished
#: no task; the supervisor counts these in a row
CHILD_START_FAILED = 77
#: a child met a permanent backend error or bad settings: the supervisor stops all, exit 2
CHILD_PERMANENT = 78
#: a child under --halt-when-empty waited retry_timeout for the backend: exit 3
CHILD_UNAVAILABLE = 79

#: deaths in a row before a task is finished after which --halt-when-empty gives up
CRASH_LOOP_LIMIT = 5


def for_error(exc: BaseException) -> int:
    """The command's exit code for an error that ended it."""
    if isinstance(exc, TransportUnavailable):
        return UNAVAILABLE
    if isinstance(exc, AsynctaskError):
        return USAGE  # bad input, settings, plugins, or a backend that refuses us
    return SOFTWARE


def child_code_for(exc: BaseException) -> int:
    """A child's exit code for an error that stopped it before or while it worked."""
    if isinstance(exc, TransportRefused):
        return CHILD_PERMANENT
    if isinstance(exc, TransportUnavailable):
        return CHILD_UNAVAILABLE
    return CHILD_START_FAILED
