"""RabbitMQ for the amqp tests: a vhost of their own, and rabbitmqctl where it is at hand;
a RabbitMQ node of a test's own for the tests that stop the broker (``own_rabbitmq``: the
shared broker is never stopped).

``ASYNCTASK_AMQP_URI`` names another broker (its vhost is then used as it is);
``ASYNCTASK_RABBITMQCTL`` another rabbitmqctl command (e.g. ``docker exec rabbit
rabbitmqctl``). Without rabbitmqctl the tests that stop the broker skip.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import amqp
import kombu
import pytest

from asynctask.testing import require_service
from asynctask_amqp.topology import RUNGS
from chaos.private_rabbitmq import PrivateRabbitMQ
from tests.conftest import redis_state_uri  # noqa: F401 (tests import it from here)

#: a vhost and a user of this test session's own: several sessions share one broker, and
#: a test that closes every connection of its vhost must close only its own
VHOST = f"asynctask_test_{os.getpid()}"
#: whose password is not its name (so a leak shows in any text)
USER, PASSWORD = f"asynctask_test_{os.getpid()}", "s3cret-Pw0rd"
BASE_URI = "amqp://guest:guest@127.0.0.1:5672"


def rabbitmqctl_command() -> list[str] | None:
    """The rabbitmqctl command line, or None when there is none."""
    configured = os.environ.get("ASYNCTASK_RABBITMQCTL")
    if configured:
        return shlex.split(configured)
    found = shutil.which("rabbitmqctl")
    return [found] if found else None


def rabbitmqctl(*args: str, timeout: float = 60) -> str:
    """Run rabbitmqctl; return its output (raise if it fails)."""
    command = rabbitmqctl_command()
    if command is None:
        pytest.skip("rabbitmqctl is not available (set ASYNCTASK_RABBITMQCTL)")
    done = subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr or done.stdout}")
    return done.stdout


@pytest.fixture
def own_rabbitmq() -> Iterator[PrivateRabbitMQ]:
    """A RabbitMQ node of this test's own (``chaos.private``: its own node name, ports,
    mnesia and cookie, no plugin), to stop at will; shut down and removed after the test.
    Skipped (or failed under ASYNCTASK_REQUIRE_SERVICES=1) where it cannot start."""
    nodes: list[PrivateRabbitMQ] = []

    def start() -> None:
        nodes.append(PrivateRabbitMQ())
        nodes[0].start()

    try:
        require_service("a RabbitMQ node of the test's own (rabbitmq-server)", start)
        yield nodes[0]
    finally:
        for node in nodes:
            node.remove()


def _check_broker(uri: str) -> None:
    with kombu.Connection(uri, connect_timeout=2) as connection:
        connection.ensure_connection(max_retries=0, reraise_as_library_errors=False)


@pytest.fixture(scope="session")
def amqp_uri() -> Iterator[str]:
    """The URI of a reachable broker, in a vhost only these tests use (emptied after)."""
    configured = os.environ.get("ASYNCTASK_AMQP_URI")
    if configured:
        require_service("RabbitMQ", lambda: _check_broker(configured))
        yield configured
        return
    require_service("RabbitMQ", lambda: _check_broker(BASE_URI + "//"))
    if rabbitmqctl_command() is None:
        yield BASE_URI + "//"
        return
    if VHOST not in rabbitmqctl("list_vhosts", "-q", "--no-table-headers").split():
        rabbitmqctl("add_vhost", VHOST)
    if USER not in rabbitmqctl("list_users", "-q", "--no-table-headers").split():
        rabbitmqctl("add_user", USER, PASSWORD)
    rabbitmqctl("set_permissions", "-p", VHOST, USER, ".*", ".*", ".*")
    yield f"amqp://{USER}:{PASSWORD}@127.0.0.1:5672/{VHOST}"
    # the vhost's hundreds of test queues go with it
    rabbitmqctl("delete_vhost", VHOST)
    rabbitmqctl("delete_user", USER)


def vhost_of(uri: str) -> str:
    """The vhost named by an amqp URI."""
    with kombu.Connection(uri.partition("?")[0]) as connection:
        return str(connection.virtual_host)


def on_shared_ladder(connection: kombu.Connection, queue: str, kind: str = "classic") -> list[Any]:
    """The messages of ``queue`` on the vhost's shared ladder, read with plain py-amqp as
    the README says: a rung's messages taken unacked on a channel of their own and put
    back, in place, when it closes; a message's task queue is its routing key."""
    prefix = "asynctask.ladder" if kind == "classic" else f"asynctask.ladder_{kind}"
    found = []
    channel = connection.connection.channel()
    try:
        for rung in RUNGS:
            name = f"{prefix}.{round(rung * 1000)}"
            try:
                if not channel.queue_declare(name, passive=True).message_count:
                    continue
            except amqp.exceptions.NotFound:
                break  # the rungs are declared together: no ladder
            while (message := channel.basic_get(name)) is not None:
                if message.delivery_info["routing_key"] == queue:
                    found.append(message)
    finally:
        channel.close()
    return found
