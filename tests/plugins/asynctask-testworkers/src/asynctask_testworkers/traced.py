"""A worker whose process keeps its spans in the OpenTelemetry SDK's in-memory exporter.

With ``TESTWORKERS_SPANS`` set, ``setup()`` installs a tracer provider with an
``InMemorySpanExporter``; ``teardown()`` appends every finished span as a JSON line to
that file, so a test in another process can read them.
"""

from __future__ import annotations

import json
import os
from typing import Any

from asynctask import AsyncTaskWorker


class TracedWorker(AsyncTaskWorker):
    """Opens a span of its own inside the run's span; raises when ``"fail": true``."""

    name = "test_traced"
    max_retries = 1
    retry_backoff = 0.05

    def setup(self) -> None:
        """Install the SDK with an in-memory exporter (when asked to)."""
        self.exporter: Any = None
        if not os.environ.get("TESTWORKERS_SPANS"):
            return
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        trace.set_tracer_provider(provider)

    def process(self, payload: dict[str, Any]) -> None:
        from opentelemetry import trace

        with trace.get_tracer("testworkers").start_as_current_span("inner work"):
            if payload.get("fail"):
                raise ValueError(f"failing on purpose: {payload.get('n')}")

    def teardown(self) -> None:
        """Write the finished spans for the test to read."""
        if self.exporter is None:
            return
        lines = []
        for span in self.exporter.get_finished_spans():
            ctx = span.get_span_context()
            lines.append(
                json.dumps(
                    {
                        "name": span.name,
                        "trace_id": f"{ctx.trace_id:032x}",
                        "span_id": f"{ctx.span_id:016x}",
                        "parent_id": None if span.parent is None else f"{span.parent.span_id:016x}",
                        "kind": span.kind.name,
                        "attributes": dict(span.attributes or {}),
                        "status": span.status.status_code.name,
                        "events": [
                            {"name": e.name, "attributes": dict(e.attributes or {})}
                            for e in span.events
                        ],
                        "pid": os.getpid(),
                    }
                )
            )
        with open(os.environ["TESTWORKERS_SPANS"], "a", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
