"""Cancel of a running task under ``asynctask workers`` (DESIGN.md section 6).

The status contract (``asynctask.testing.status``) covers every other state; this one
needs a supervisor: the running child is replaced within a second of ``cancel()``, and
the task is not retried. Each transport keeping task status runs it; AMQP keeps its
statuses in a filesys folder (``asynctask_state``).
"""

from __future__ import annotations

import signal
import time

import pytest

from asynctask import get_transport
from asynctask.testing import require_service
from backends import BACKENDS
from support import events, wait_for

#: the contract's bound: the child running a cancelled task is gone within this
REPLACED_WITHIN = 1.0


@pytest.fixture(
    params=[
        pytest.param("filesys"),
        pytest.param("pgsql"),
        pytest.param("redis"),
        pytest.param("amqp"),
    ]
)
def status_backend(request, tmp_path) -> tuple[str, dict[str, str]]:
    """A transport URI whose statuses are kept, and the settings that keep them."""
    make, check = BACKENDS[request.param]
    if check is not None:
        require_service(request.param, check)
    if request.param == "amqp":  # any store will do: a folder needs no other server
        return make(tmp_path), {"asynctask_state": f"filesys:{tmp_path / 'state'}"}
    return make(tmp_path), {}


def test_a_task_cancelled_while_running_has_its_child_replaced_and_is_not_retried(
    status_backend, queue, ledger, start_workers
):
    # Given a task that runs 30 s, and one behind it, on one child
    uri, settings = status_backend
    transport = get_transport(uri)
    transport.state_uri = settings.get("asynctask_state")
    long_id = transport.submit_task(queue, {"ledger": str(ledger), "n": 1, "seconds": 30})
    next_id = transport.submit_task(queue, {"ledger": str(ledger), "n": 2})
    workers = start_workers(
        uri, {queue: {"worker": "test_record", "prefetch": 1}}, settings=settings
    )
    wait_for(lambda: events(ledger, "start"), 60, "the long task to start")
    status = wait_for(lambda: transport.status(long_id), 10, "its status")
    assert status.state == "running", status
    (child,) = workers.children()
    # When it is cancelled while it runs
    cancelled = time.monotonic()
    assert transport.cancel(long_id) is True
    # Then its child is gone within the bound, and a new one runs the next task
    wait_for(lambda: child not in workers.children(), 10, "the child to be replaced")
    took = time.monotonic() - cancelled
    assert took < REPLACED_WITHIN, f"the child was replaced {took:.2f} s after the cancel"
    done = transport.wait(next_id, timeout=60)
    assert done.state == "succeeded"
    # And the cancelled task stays cancelled: never started again, not in the failed store
    time.sleep(1.0)  # a retry (back-off 0.2 s) would have started by now
    starts = [e["payload"]["n"] for e in events(ledger, "start")]
    assert starts == [1, 2], starts
    final = transport.status(long_id)
    assert final is not None and final.state == "cancelled", final
    assert transport.failed_tasks(queue) == []
    if "in_flight" in transport.features.counts:  # AMQP cannot count it
        assert transport.queue_stats(queue).in_flight == 0
    workers.signal(signal.SIGTERM)
    assert workers.wait(60) == 0
    output = workers.output()
    assert f"Task {long_id} was cancelled while it ran; replacing its child" in output
    assert f"replaced: it ran the cancelled task {long_id}" in output
