"""asynctask: a background task queue with one contract on every backend.

The public API is what this module exports; everything else is internal.
"""

from __future__ import annotations

from asynctask.api import get_transport
from asynctask.errors import (
    AsynctaskError,
    ConfigurationError,
    InvalidTaskError,
    InvalidURIError,
    NotSupportedError,
    PluginError,
    TransportClosed,
    TransportError,
    TransportRefused,
    TransportUnavailable,
    UnknownWorkerError,
)
from asynctask.events import NotListening
from asynctask.hookspecs import hookimpl
from asynctask.runner import process_queue, run_worker
from asynctask.transport import (
    Consumer,
    Delivery,
    FailedTask,
    InFlightTask,
    QueueStats,
    Transport,
    WaitingTask,
)
from asynctask.worker import AsyncTaskWorker

__all__ = [
    "AsyncTaskWorker",
    "AsynctaskError",
    "ConfigurationError",
    "Consumer",
    "Delivery",
    "FailedTask",
    "InFlightTask",
    "InvalidTaskError",
    "InvalidURIError",
    "NotListening",
    "NotSupportedError",
    "PluginError",
    "QueueStats",
    "Transport",
    "TransportClosed",
    "TransportError",
    "TransportRefused",
    "TransportUnavailable",
    "UnknownWorkerError",
    "WaitingTask",
    "get_transport",
    "hookimpl",
    "process_queue",
    "run_worker",
]
