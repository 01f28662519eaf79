"""asynctask-otel: the submit's trace context travels in the task; each run is its child span.

The producer is this test process; the worker is a child of ``asynctask workers``, whose
spans land in the SDK's in-memory exporter and are written out when it stops.
"""

from __future__ import annotations

import json

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from asynctask import AsyncTaskWorker, get_transport, hookimpl
from asynctask import events as events_module
from asynctask.plugins import load_plugins
from asynctask.runner import LoopOptions, run_loop
from asynctask.testing import unique_queue


def test_each_run_is_a_child_span_of_its_submit(
    backend_uri, queue, start_workers, tmp_path, monkeypatch
):
    # Given a producer span around the submit of one task that succeeds and one that fails
    # (test_traced: max_retries 1, so two attempts)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    transport = get_transport(backend_uri)
    with provider.get_tracer("test").start_as_current_span("produce") as producer:
        ok_id, bad_id = transport.submit_tasks(queue, [{"n": 1}, {"n": 2, "fail": True}])
    submit = producer.get_span_context()
    # and a task submitted outside any span
    transport.submit_task(queue, {"n": 3})
    # When a worker in another process runs them
    spans_file = tmp_path / "spans.jsonl"
    monkeypatch.setenv("TESTWORKERS_SPANS", str(spans_file))
    workers = start_workers(backend_uri, {queue: "test_traced"}, "--halt-when-empty")
    assert workers.wait(90) == 0, workers.output()
    spans = [json.loads(line) for line in spans_file.read_text().splitlines()]
    runs = [s for s in spans if s["name"] == f"asynctask.run {queue}"]
    # Then each attempt is a CONSUMER span; those of the submitted-in-a-span tasks are
    # children of the producer's span, in its trace
    by_task = {}
    for run in runs:
        by_task.setdefault(run["attributes"]["asynctask.task_id"], []).append(run)
    traced = by_task[ok_id] + by_task[bad_id]
    assert len(traced) == 3
    for run in traced:
        assert run["kind"] == "CONSUMER"
        assert run["trace_id"] == f"{submit.trace_id:032x}"
        assert run["parent_id"] == f"{submit.span_id:016x}"
        assert run["attributes"]["asynctask.queue"] == queue
        assert run["attributes"]["asynctask.worker"] == "test_traced"
    [ok] = by_task[ok_id]
    assert ok["attributes"]["asynctask.outcome"] == "succeeded" and ok["status"] == "UNSET"
    assert ok["attributes"]["asynctask.attempt"] == 1
    bad = sorted(by_task[bad_id], key=lambda s: s["attributes"]["asynctask.attempt"])
    assert [
        (s["attributes"]["asynctask.attempt"], s["attributes"]["asynctask.outcome"]) for s in bad
    ] == [
        (1, "retried"),
        (2, "failed"),
    ]
    for s in bad:
        assert s["status"] == "ERROR"
        [event] = s["events"]
        assert event["name"] == "exception"
        assert event["attributes"]["exception.type"] == "ValueError"
        assert "failing on purpose: 2" in event["attributes"]["exception.message"]
    # and the worker's own span is a child of the run's span
    inner = [s for s in spans if s["name"] == "inner work"]
    assert {s["parent_id"] for s in inner} == {r["span_id"] for r in runs}
    # and the task submitted outside any span starts a trace of its own
    [lone_id] = [tid for tid in by_task if tid not in (ok_id, bad_id)]
    [lone] = by_task[lone_id]
    assert lone["parent_id"] is None and lone["trace_id"] != f"{submit.trace_id:032x}"


class FixedHeaders:
    """A plugin that adds one header to every submit."""

    @hookimpl
    def asynctask_submit_headers(self, queue):
        return {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}


class Seen(AsyncTaskWorker):
    name = "seen_inline"

    def __init__(self) -> None:
        super().__init__()
        self.payloads: list[dict] = []
        self.headers: list[dict] = []

    def process(self, payload):
        self.payloads.append(payload)
        self.headers.append(self.delivery.headers)


def test_headers_stay_out_of_the_payload_process_and_get_task_see(tmp_path):
    registry = load_plugins()
    plugin = FixedHeaders()
    registry.register_plugin(plugin, "headers_test")
    try:
        # Given tasks submitted while a plugin adds a header
        transport = get_transport(f"filesys:{tmp_path}")
        queue = unique_queue()
        transport.submit_tasks(queue, [{"a": 1}, {}])
        # Then get_task returns the payload alone
        assert transport.get_task(queue) == {"a": 1}
        # and process() sees the payload alone, the header on its delivery
        worker = Seen()
        run_loop(worker, transport, queue, LoopOptions(stop_when_idle=True, wait=0.05))
        assert worker.payloads == [{}]
        assert worker.headers == [{"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}]
    finally:
        registry.manager.unregister(plugin)
        events_module.bind(registry.manager)
