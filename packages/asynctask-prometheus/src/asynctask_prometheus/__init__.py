"""Prometheus metrics for ``asynctask workers`` (``--metrics-port``) and ``asynctask top``."""

from __future__ import annotations

__all__: list[str] = []
