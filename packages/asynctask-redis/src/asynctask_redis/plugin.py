"""Registers the redis transport with asynctask; the transport module is imported only when used."""

from __future__ import annotations

from typing import TYPE_CHECKING

from asynctask import hookimpl
from asynctask.hookspecs import RegisterTransport

if TYPE_CHECKING:
    from asynctask.transport import Transport


@hookimpl
def asynctask_register_transports(register: RegisterTransport) -> None:
    """Register the redis transport."""

    def load() -> type[Transport]:
        from asynctask_redis.transport import RedisTransport

        return RedisTransport

    register(("redis", "rediss", "unix"), load)

    def load_cluster() -> type[Transport]:
        from asynctask_redis.cluster import RedisClusterTransport

        return RedisClusterTransport

    register(("redis+cluster",), load_cluster)

    def load_sentinel() -> type[Transport]:
        from asynctask_redis.transport import RedisSentinelTransport

        return RedisSentinelTransport

    register(("redis+sentinel",), load_sentinel)
