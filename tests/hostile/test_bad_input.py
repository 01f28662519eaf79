"""Hostile and careless input written straight into every backend (DESIGN.md section 10).

Each case of ``chaos.badinput`` (the catalogue ``make chaos`` turns into the bad-input
table of docs/reliability.md) is written by hand between two good tasks; the run loop of
the worker children then takes the queue. The bad message must end in the failed store
with its reason (or be refused where it was written), the worker must go on, and its
neighbours must run once, on their first attempt.
"""

from __future__ import annotations

import uuid

import pytest

from asynctask import get_transport
from asynctask.testing import require_service
from backends import BACKENDS
from chaos.badinput import CASES, SUBMIT_CASES, run_case, run_submit_case
from chaos.servers import BACKENDS as CHAOS_BACKENDS

FILESYS_ONLY = {case.name for case in CASES if case.name.startswith("filesys:")}


@pytest.fixture(params=sorted(BACKENDS))
def chaos_backend(request, tmp_path):
    """A chaos backend on the test server as it is (no restarts), and a transport of its own."""
    name = request.param
    make, check = BACKENDS[name]
    if check is not None:
        require_service(name, check)
    backend = CHAOS_BACKENDS[name](tmp_path, given_uri=make(tmp_path))
    backend.start()
    transport = type(get_transport(backend.uri))(backend.uri)
    yield backend, transport
    transport.close()
    backend.stop()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_bad_message_goes_to_the_failed_store_and_the_worker_goes_on(
    case, chaos_backend, tmp_path
):
    backend, transport = chaos_backend
    if case.name in FILESYS_ONLY and backend.name != "filesys":
        pytest.skip("a file-system case")  # the table shows these as n/a elsewhere
    # Given a bad message written by hand between two good tasks
    # When the workers' run loop takes the queue until it is idle
    outcome = run_case(case, backend, transport, tmp_path)
    if outcome.outcome == "unsupported":
        pytest.skip(outcome.detail)  # the storage format cannot hold it (the table says n/a)
    # Then it is in the failed store with its reason (or refused where it was written),
    # the neighbours ran once each on their first attempt, and nothing leaked
    assert outcome.ok, (outcome.outcome, outcome.detail, outcome.problems)
    assert outcome.outcome in ("failed store", "refused") or outcome.outcome.startswith("ran ")


@pytest.mark.parametrize(
    ("name", "payload", "queue"), SUBMIT_CASES, ids=[c[0] for c in SUBMIT_CASES]
)
def test_submit_refuses_what_the_rules_refuse_with_the_same_error_everywhere(
    name, payload, queue, chaos_backend
):
    _, transport = chaos_backend
    outcome = run_submit_case(name, payload, queue, transport)
    assert outcome.ok, (outcome.outcome, outcome.detail)
    if queue is not None:
        assert "not a valid queue name" in outcome.detail and "100" in outcome.detail
    elif "limit" in name:
        assert "asynctask_max_payload_bytes" in outcome.detail


@pytest.mark.parametrize(
    "case", [c for c in CASES if "3,000" in c.name or "5,000" in c.name], ids=lambda c: c.name
)
def test_get_task_moves_a_bad_message_aside_and_returns_the_next(case, chaos_backend, tmp_path):
    # Given a bad message between two good tasks
    backend, transport = chaos_backend
    queue = f"take_{uuid.uuid4().hex[:10]}"
    transport.submit_task(queue, {"n": 1})
    case.write(backend, queue, tmp_path)
    transport.submit_task(queue, {"n": 2})
    # When a script takes the tasks one by one (the at-most-once get_task)
    taken = [transport.get_task(queue), transport.get_task(queue)]
    # Then it gets both good ones, and the bad one waits in the failed store
    assert taken == [{"n": 1}, {"n": 2}]
    [failed] = transport.failed_tasks(queue)
    assert case.reason.lower() in failed.error.lower()
    transport.purge_failed(queue)
