"""A many-hosts scenario's network and its server: ``hosts_with_server``.

The hosts are namespaces of ``chaos.hosts``; the server is one of our own
(``chaos.private_*``, the same starters as every other test's) placed in the server
namespace, on its bridge address at the usual port, where the hosts reach it. Everything
is stopped and removed when the block ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

from chaos.hosts import Network
from chaos.private import Place, PrivateServer
from chaos.private_postgres import private_postgres
from chaos.private_rabbitmq import private_rabbitmq
from chaos.private_redis import private_redis

#: the started server of each transport at a place (redis persisting every write)
_STARTERS: dict[str, Callable[[Place], AbstractContextManager[PrivateServer]]] = {
    "redis": lambda place: private_redis(appendonly=True, place=place),
    "pgsql": private_postgres,
    "amqp": private_rabbitmq,
}

#: URI options of the many-hosts scenarios: a recovery bound of 5 s on redis and pgsql
#: (the other scenarios' 2 s gives an owner's key 1 s to live: on a machine loaded 6x
#: over its cores, a keeper's beat or the server itself lags that long, an owner is
#: taken for dead while it lives, and its tasks and slots are given away), retries for
#: as long as a cut lasts
HOSTED_OPTIONS: dict[str, dict[str, str]] = {
    "redis": {"recovery_seconds": "5", "retry_timeout": "60"},
    "pgsql": {
        "recovery_seconds": "5",
        "retry_timeout": "60",
        "application_name": "asynctask_chaos",
    },
    "amqp": {"heartbeat": "2", "retry_timeout": "60"},
}


def hosted_uri(name: str, server: PrivateServer) -> str:
    """The URI the hosts use for ``server``, with ``HOSTED_OPTIONS``."""
    return server.uri(**HOSTED_OPTIONS[name])


@contextlib.contextmanager
def hosts_with_server(name: str, hosts: int) -> Iterator[tuple[Network, PrivateServer]]:
    """``hosts`` host namespaces and a private server of transport ``name`` in the
    server namespace; everything stopped and removed afterwards."""
    with Network(hosts) as network:
        assert network.server is not None
        place = Place(network.server_address, network.server)
        with _STARTERS[name](place) as server:
            yield network, server
