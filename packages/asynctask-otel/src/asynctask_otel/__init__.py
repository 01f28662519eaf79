"""OpenTelemetry tracing for asynctask (a plugin on the lifecycle hooks)."""

from __future__ import annotations

__all__: list[str] = []
