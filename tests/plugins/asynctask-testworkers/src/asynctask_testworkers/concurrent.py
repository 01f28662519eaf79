"""Workers that run many tasks at once in one child: async ones and a threaded sync one.

Each takes a payload ``kind`` where it matters: ``ok`` (sleeps ``seconds``, then done),
``raise``, ``timeout`` (runs past the one-second timeout; a coroutine honours the
cancellation), ``ignore`` (a coroutine that swallows its cancellation and keeps going).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from asynctask import AsyncTaskWorker
from asynctask_testworkers.workers import record


class AsyncSleepWorker(AsyncTaskWorker):
    """Awaits ``asyncio.sleep(seconds)`` (default 1); 50 at once in one child."""

    name = "test_async_sleep"
    child_concurrency = 50

    async def process(self, payload: dict[str, Any]) -> None:
        record(payload, "start")
        await asyncio.sleep(float(payload.get("seconds", 1)))
        record(payload, "done")


class AsyncRaiseWorker(AsyncTaskWorker):
    """An ``async def process`` that raises: not retried, so the failed store at once."""

    name = "test_async_raise"
    max_retries = 0

    async def process(self, payload: dict[str, Any]) -> None:
        record(payload, "start")
        await asyncio.sleep(0)
        raise RuntimeError(f"async failing on purpose: {payload.get('n')}")


class AsyncMixWorker(AsyncTaskWorker):
    """Succeeds, raises, times out or ignores its cancellation, as the payload says."""

    name = "test_async_mix"
    child_concurrency = 16
    timeout = 1.0
    cancel_grace = 0.5
    max_retries = 1
    retry_backoff = 0.1

    async def process(self, payload: dict[str, Any]) -> None:
        record(payload, "start")
        kind = payload["kind"]
        if kind == "raise":
            raise RuntimeError(f"failing on purpose: {payload['n']}")
        if kind == "ok":
            await asyncio.sleep(float(payload.get("seconds", 0.3)))
        elif kind == "timeout":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                record(payload, "cancelled")
                raise
        elif kind == "ignore":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                record(payload, "cancelled")
            await asyncio.sleep(30)
        record(payload, "done")


class ThreadMixWorker(AsyncTaskWorker):
    """A plain ``process`` run in 8 threads: succeeds, raises or runs past its timeout."""

    name = "test_thread_mix"
    child_concurrency = 8
    timeout = 1.0
    max_retries = 1
    retry_backoff = 0.1

    def process(self, payload: dict[str, Any]) -> None:
        record(payload, "start")
        kind = payload["kind"]
        if kind == "raise":
            raise RuntimeError(f"failing on purpose: {payload['n']}")
        time.sleep(float(payload.get("seconds", 0.3)) if kind == "ok" else 30)
        record(payload, "done")


class ThreadSleepWorker(AsyncTaskWorker):
    """A plain ``process`` sleeping ``seconds`` (default 1) in 50 threads."""

    name = "test_thread_sleep"
    child_concurrency = 50

    def process(self, payload: dict[str, Any]) -> None:
        record(payload, "start")
        time.sleep(float(payload.get("seconds", 1)))
        record(payload, "done")


class SysExitWorker(AsyncTaskWorker):
    """Calls ``sys.exit(3)`` in task code: a failed attempt like any error."""

    name = "test_sys_exit"
    max_retries = 1
    retry_backoff = 0.1

    def process(self, payload: dict[str, Any]) -> None:
        record(payload, "start")
        sys.exit(3)


class AsyncBlockWorker(AsyncTaskWorker):
    """Blocks its event loop with ``time.sleep(block)`` if asked, else awaits ``seconds``."""

    name = "test_async_block"
    child_concurrency = 8

    async def process(self, payload: dict[str, Any]) -> None:
        record(payload, "start")
        if payload.get("block"):
            time.sleep(float(payload["block"]))  # sync code in an async task
        else:
            await asyncio.sleep(float(payload.get("seconds", 1)))
        record(payload, "done")
