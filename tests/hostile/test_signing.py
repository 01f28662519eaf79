"""Signed tasks (DESIGN.md section 10) on every transport.

With ``asynctask_signing_key`` the producer signs each task in a header; a worker with the
key runs only tasks signed by one of its keys. Another program signs a task it writes
directly as each transport's README shows: here, by hand, with hmac and the README's
recipe, not with asynctask's own code.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid

import pytest

from asynctask import AsyncTaskWorker, get_transport
from asynctask.runner import LoopOptions, run_loop
from asynctask.settings import configure, load_settings
from asynctask.testing import require_service
from backends import BACKENDS
from chaos.servers import BACKENDS as CHAOS_BACKENDS

OLD, NEW, OTHER = "old-key-0123456789abcdef", "new-key-0123456789abcdef", "not-our-key-0123456789"


class Recorder(AsyncTaskWorker):
    name = "signing_recorder"

    def __init__(self) -> None:
        super().__init__()
        self.ran: list[dict] = []

    def process(self, payload):
        self.ran.append(payload)


def _drain(transport, queue) -> Recorder:
    worker = Recorder()
    run_loop(worker, transport, queue, LoopOptions(halt_when_empty=True, wait=0.2))
    return worker


@pytest.fixture(params=sorted(BACKENDS))
def backend(request, tmp_path):
    name = request.param
    make, check = BACKENDS[name]
    if check is not None:
        require_service(name, check)
    chaos = CHAOS_BACKENDS[name](tmp_path, given_uri=make(tmp_path))
    chaos.start()
    yield chaos
    chaos.stop()


def _transport(uri: str, *keys: str):
    configure(load_settings(overrides=[f"asynctask_signing_key={json.dumps(list(keys))}"]))
    transport = type(get_transport(uri))(uri)
    transport.signing_keys = keys
    return transport


def test_a_signed_task_runs_under_a_rotated_key_list_and_not_under_another_key(backend):
    queue = f"signed_{uuid.uuid4().hex[:10]}"
    # Given a producer that signs with the old key
    producer = _transport(backend.uri, OLD)
    producer.submit_tasks(queue, [{"n": 1, "b": [1, 2], "a": "é"}, {"n": 2}])
    # When a worker whose list starts with a new key, and still has the old one, drains it
    rotated = _transport(backend.uri, NEW, OLD)
    worker = _drain(rotated, queue)
    # Then both ran
    assert sorted(p["n"] for p in worker.ran) == [1, 2]
    # And a worker holding only another key runs none: they go to the failed store unrun
    producer.submit_task(queue, {"n": 3})
    stranger = _transport(backend.uri, OTHER)
    assert _drain(stranger, queue).ran == []
    [failed] = stranger.failed_tasks(queue)
    assert "bad signature" in failed.error
    for t in (producer, rotated, stranger):
        t.purge_failed(queue)
        t.close()


def test_a_task_signed_by_another_program_as_the_readme_shows_runs(backend):
    # Given a task written straight into the backend by another program, signed by hand:
    # HMAC-SHA256 over "<queue>\n<task id>\n<payload as sorted compact JSON>"
    queue = f"signed_{uuid.uuid4().hex[:10]}"
    worker_transport = _transport(backend.uri, NEW)
    worker_transport.submit_task(queue, {"n": 0})  # makes the queue (amqp needs it)
    payload = {"z": 1, "a": [True, None], "n": 5}
    task_id = uuid.uuid4().hex
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    mac = hmac.new(NEW.encode(), f"{queue}\n{task_id}\n{body}".encode(), hashlib.sha256)
    headers = {"asynctask-signature": "v1=" + mac.hexdigest()}
    backend.write_raw(queue, body, headers=headers, task_id=task_id)
    # When a worker with the key drains the queue
    worker = _drain(worker_transport, queue)
    # Then the task ran, and nothing is in the failed store
    assert sorted(p["n"] for p in worker.ran) == [0, 5]
    assert worker_transport.failed_tasks(queue) == []
    worker_transport.close()
