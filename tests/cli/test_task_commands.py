"""``asynctask task``, ``wait``, ``cancel`` and the submit options (issue 16).

The commands are the same code on every transport (the status calls behind them are the
contract suite's, run on all five), so they run here on the embedded filesys and on AMQP,
the one that keeps its statuses elsewhere (the shared Redis, in ``asynctask_state``):
each command is a new interpreter, seconds apiece on a loaded machine.
"""

from __future__ import annotations

import json
import time

import pytest

from asynctask import AsyncTaskWorker, get_transport
from asynctask.testing import require_service, unique_queue
from asynctask.transport import Transport
from backends import BACKENDS, REDIS_URI
from clitools import Result, run_asynctask
from support import drain, reserve_within


@pytest.fixture(params=["filesys", "amqp"])
def backend_uri(request, tmp_path) -> str:
    make, check = BACKENDS[request.param]
    if check is not None:
        require_service(request.param, check)
    return make(tmp_path)


def _with_priorities(backend_uri: str) -> str:
    """The backend's URI as the commands use it: AMQP queues take priorities only when
    declared with x-max-priority."""
    if not backend_uri.startswith("amqp"):
        return backend_uri
    return backend_uri + ("&" if "?" in backend_uri else "?") + "max_priority=9"


@pytest.fixture
def cli(backend_uri, request):
    """Run ``asynctask ARGS`` on the backend (with a state store for AMQP)."""
    amqp = backend_uri.startswith("amqp")
    state = ["--set", f"asynctask_state={REDIS_URI}"] if amqp else []
    uri = _with_priorities(backend_uri)

    def run(*args: str, timeout: float = 60) -> Result:
        return run_asynctask(*args, *state, uri=uri, timeout=timeout)

    return run


def _transport(backend_uri: str) -> Transport:
    """The backend's transport, its statuses where the commands read them (AMQP: the
    shared Redis, ``asynctask_state``)."""
    transport = get_transport(_with_priorities(backend_uri))
    if backend_uri.startswith("amqp"):
        transport.state_uri = REDIS_URI
    return transport


def _submit(cli, queue: str, *options: str) -> str:
    result = cli("submit", queue, '{"n": 1}', *options, "--json")
    assert result.code == 0, result.err
    [task_id] = json.loads(result.out)["ids"]
    return task_id


def test_task_shows_a_queued_task_and_cancel_makes_it_final(cli):
    # Given a task submitted with every option
    queue = unique_queue("clitask")
    task_id = _submit(cli, queue, "--priority", "5", "--expires", "600")
    # When `task --json` reads it
    shown = cli("task", task_id, "--json")
    assert shown.code == 0, shown.err
    status = json.loads(shown.out)
    # Then it is queued, with JSON values
    assert status["id"] == task_id and status["queue"] == queue
    assert status["state"] == "queued" and status["attempts"] == 0
    assert isinstance(status["submitted_at"], float) and status["result"] is None
    # And cancel ends it (exit 0), a second cancel finds it final (exit 1)
    first = cli("cancel", task_id, "--json")
    assert json.loads(first.out) == {"id": task_id, "cancelled": True, "state": "cancelled"}
    assert first.code == 0
    again = cli("cancel", task_id)
    assert again.code == 1 and "already final" in again.err
    again_json = json.loads(cli("cancel", task_id, "--json").out)
    assert again_json["cancelled"] is False and again_json["state"] == "cancelled"
    # And wait on a cancelled task returns at once with exit 1
    waited = cli("wait", task_id, "--json", "--timeout", "10")
    assert waited.code == 1 and json.loads(waited.out)["state"] == "cancelled"


def test_wait_times_out_with_124_and_an_unknown_id_exits_1(cli):
    queue = unique_queue("cliwait")
    task_id = _submit(cli, queue)
    try:
        waited = cli("wait", task_id, "--timeout", "0.5")
        assert waited.code == 124, (waited.code, waited.err)
        assert "not final after 0.5 s" in waited.err
        unknown = cli("task", "0" * 32)
        assert unknown.code == 1 and "no task" in unknown.err
        assert cli("wait", "0" * 32, "--timeout", "1").code == 1
    finally:
        cli("cancel", task_id)


def test_wait_shows_the_result_of_a_task_that_succeeded(cli, backend_uri):
    # Given a task run to success by a consumer, with a result
    queue = unique_queue("cliresult")
    task_id = _submit(cli, queue)
    transport = _transport(backend_uri)
    with transport.consumer(queue) as consumer:
        delivery = reserve_within(consumer)
        assert delivery.id == task_id and consumer.start(delivery) == "run"
        consumer.ack(delivery, '{"sent": 3}')
        store = transport.external_state()
        if store is not None:  # the runner writes the outcome where state is kept apart
            store.settled(queue, task_id, "succeeded", 1, result_json='{"sent": 3}')
    # When `wait` reads it, Then exit 0 and the result as JSON
    waited = cli("wait", task_id, "--json", "--timeout", "10")
    assert waited.code == 0, waited.err
    assert json.loads(waited.out)["result"] == {"sent": 3}
    plain = cli("task", task_id)
    assert plain.code == 0 and 'result        {"sent": 3}' in plain.out


def test_submit_with_a_unique_key_twice_prints_the_same_id(cli):
    queue = unique_queue("cliuniq")
    first = _submit(cli, queue, "--unique-key", "welcome:42")
    second = _submit(cli, queue, "--unique-key", "welcome:42")
    try:
        assert first == second
    finally:
        cli("cancel", first)


def test_submit_priority_reaches_the_task(cli, backend_uri):
    """Fails if ``submit --priority`` is dropped on its way (checked with the command
    passing priority 0: the task came out behind the one submitted before it)."""
    # Given a task of priority 0, then one submitted by the command with --priority 7
    queue = unique_queue("cliprio")
    transport = _transport(backend_uri)
    try:
        plain = transport.submit_task(queue, {"n": 0})
        urgent = _submit(cli, queue, "--priority", "7")
        # When a consumer takes them, Then the urgent one comes first
        taken = []
        with transport.consumer(queue) as consumer:
            for _ in range(2):
                delivery = reserve_within(consumer)
                taken.append(delivery.id)
                consumer.ack(delivery)
        assert taken == [urgent, plain]
    finally:
        transport.purge(queue)
        transport.close()


def test_submit_refuses_bad_options_before_writing(cli):
    queue = unique_queue("clibad")
    assert cli("submit", queue, '{"n": 1}', "--priority", "10").code == 2
    expired = cli("submit", queue, '{"n": 1}', "--expires", "-1")
    assert expired.code == 2 and "expires" in expired.err
    many = cli("submit", queue, "-", "--unique-key", "k")  # stdin is empty here
    assert many.code == 0  # nothing to submit, nothing written
    looked = cli("queues", "--json")
    assert queue not in looked.out


def test_json_says_so_for_an_unknown_id_and_a_wait_that_timed_out(cli):
    # Given an id the store never saw, and a task no worker takes
    unknown = "0" * 32
    queue = unique_queue("clijson")
    task_id = _submit(cli, queue)
    try:
        # When task, wait and cancel are asked for the unknown id with --json
        for args in (("task",), ("wait", "--timeout", "1"), ("cancel",)):
            shown = cli(*args[:1], unknown, *args[1:], "--json")
            # Then each exits 1 and prints an object saying the id is unknown
            assert shown.code == 1, (args, shown.err)
            said = json.loads(shown.out)
            assert said["id"] == unknown and said["state"] is None, args
            assert "no task" in said["error"], args
        # When wait --json gives up on the queued task
        waited = cli("wait", task_id, "--timeout", "0.5", "--json")
        # Then it exits 124 and prints the status as it stands, timed out
        assert waited.code == 124, waited.err
        said = json.loads(waited.out)
        assert said["id"] == task_id and said["state"] == "queued"
        assert said["timed_out"] is True and "not final after 0.5 s" in said["timeout_error"]
        assert said["error"] is None  # the task's own: none yet
    finally:
        cli("cancel", task_id)


def test_wait_json_past_its_timeout_keeps_the_task_s_own_error(cli, backend_uri):
    """Failed before: ``"error"`` held the timeout's message, the task's last error lost."""
    # Given a task whose first attempt failed and whose retry is 10 minutes away
    queue = unique_queue("cliretry")
    task_id = _submit(cli, queue)
    transport = _transport(backend_uri)
    try:
        with transport.consumer(queue) as consumer:
            delivery = reserve_within(consumer)
            assert delivery.id == task_id and consumer.start(delivery) == "run"
            consumer.retry(delivery, 600, "ValueError: refused on purpose")
            # (as the worker does: AMQP's status is in asynctask_state, written apart)
            consumer.record_outcome(delivery, "retrying", "ValueError: refused on purpose")
        # When wait --json gives up on it
        waited = cli("wait", task_id, "--timeout", "0.2", "--json")
        # Then it exits 124 and prints the status with the task's error, and the
        # timeout's message under its own key
        assert waited.code == 124, waited.err
        said = json.loads(waited.out)
        assert (said["id"], said["state"]) == (task_id, "retrying")
        assert said["error"] == "ValueError: refused on purpose"
        assert said["timed_out"] is True
        assert said["timeout_error"] == f"task {task_id!r} is not final after 0.2 s"
        assert "not final after 0.2 s" in waited.err
    finally:
        cli("cancel", task_id)
        transport.purge(queue)
        transport.close()


class _Refuser(AsyncTaskWorker):
    name = "cli_refuser"
    max_retries = 0

    def process(self, payload):
        raise ValueError("refused on purpose")


def test_wait_exits_1_for_a_task_that_failed_or_expired(cli, backend_uri):
    # Given a task that failed (no retries) and one that expired before any worker
    queue = unique_queue("clifinal")
    failed_id = _submit(cli, queue)
    drain(_Refuser(), _transport(backend_uri), queue)
    expired_id = _submit(cli, unique_queue("cliexpired"), "--expires", "0.2")
    time.sleep(0.5)
    # When wait and task read them, Then wait exits 1 and both show the final state
    for task_id, state in ((failed_id, "failed"), (expired_id, "expired")):
        waited = cli("wait", task_id, "--json", "--timeout", "10")
        assert waited.code == 1, (state, waited.err)
        assert json.loads(waited.out)["state"] == state
        plain = cli("wait", task_id, "--timeout", "10")
        assert plain.code == 1 and f"state         {state}" in plain.out
        assert cli("task", task_id).code == 0
    assert "refused on purpose" in json.loads(cli("task", failed_id, "--json").out)["error"]
