"""The demo workers: each says what it did, so the quick start shows work being done."""

from __future__ import annotations

import os
from typing import Any

from asynctask import AsyncTaskWorker


class GreetWorker(AsyncTaskWorker):
    """Greets ``name``."""

    name = "demo_greet"

    def process(self, payload: dict[str, Any]) -> None:
        """Print a greeting."""
        print(f"[demo_greet pid {os.getpid()}] Hello, {payload.get('name', 'world')}!", flush=True)


class SumWorker(AsyncTaskWorker):
    """Adds up ``numbers``."""

    name = "demo_sum"

    def process(self, payload: dict[str, Any]) -> None:
        """Print the sum."""
        numbers = payload.get("numbers", [])
        print(f"[demo_sum pid {os.getpid()}] sum of {numbers} = {sum(numbers)}", flush=True)
