"""Dramatiq on Redis (``RedisBroker``) or RabbitMQ (``RabbitmqBroker``), by the URL's scheme.

Production settings for durability, from Dramatiq's docs: the Redis broker's messages stay
in its per-worker ack set until the actor returns (its Lua scripts; a dead worker's
messages are requeued after ``heartbeat_timeout``); the RabbitMQ broker declares durable
queues, sends persistent messages, and here waits for publisher confirms
(``confirm_delivery=True``, the setting its docs give for not losing an enqueue), as ours
does. Default middleware, no result backend (our no-op keeps no result either). The
worker: ``dramatiq MODULE --processes 1`` with its default 8 threads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import dramatiq  # type: ignore[import-not-found,unused-ignore]

from bench.peers import common

MODULE = "bench.peers.dramatiq_peer"


def _broker(url: str) -> Any:
    if url.startswith("redis"):
        from dramatiq.brokers.redis import (  # type: ignore[import-not-found,unused-ignore]
            RedisBroker,
        )

        return RedisBroker(url=url)
    from dramatiq.brokers.rabbitmq import (  # type: ignore[import-not-found,unused-ignore]
        RabbitmqBroker,
    )

    return RabbitmqBroker(url=pika_url(url), confirm_delivery=True)


def pika_url(url: str) -> str:
    """kombu's ``amqp://u:p@h:5672//`` (vhost ``/``) as pika spells it (``/%2F``)."""
    parts = urlsplit(url)
    vhost = parts.path[1:] or "/"
    return f"amqp://{parts.netloc}/{quote(vhost, safe='')}"


def noop(n: int, sent: float) -> None:
    """The no-op task."""
    common.note({"n": n, "sent": sent})


ACTOR: Any = None
if common.QUEUE_VARIABLE in os.environ:  # imported by the worker command
    dramatiq.set_broker(_broker(os.environ[common.URL_VARIABLE]))
    ACTOR = dramatiq.actor(noop, queue_name=os.environ[common.QUEUE_VARIABLE], max_retries=0)


def drain(url: str, count: int, folder: Path) -> dict[str, Any]:
    """Fill ``count`` messages with ``actor.send``, then run ``dramatiq`` until all started."""
    queue = common.queue_name("dramatiq")
    broker = _broker(url)
    dramatiq.set_broker(broker)
    actor = dramatiq.actor(noop, queue_name=queue, max_retries=0)
    try:
        for payload in common.payloads(count):
            actor.send(payload["n"], payload["sent"])
        command = [common.tool("dramatiq"), MODULE, "--processes", "1", "--queues", queue]
        result = common.run_worker(command, url, queue, count, folder)
    finally:
        if url.startswith("redis"):
            broker.flush_all()
        else:
            for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                broker.channel.queue_delete(name)
        broker.close()
    result["settings"] = "RedisBroker" if url.startswith("redis") else "RabbitmqBroker, confirms"
    return result


if __name__ == "__main__":
    common.main(drain)
