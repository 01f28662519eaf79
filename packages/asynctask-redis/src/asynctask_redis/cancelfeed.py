"""The cancels of one queue, pushed to its consumers by Redis pub/sub.

``cancel(id)`` (the ``CANCEL`` script) publishes the id on the channel ``P:Q:cancels``
when it makes a task ``cancelled``. A consumer that keeps statuses subscribes before it
moves tasks, so a task it holds that is cancelled after the move is known here, and its
``start`` needs no round trip to tell ``run`` from ``cancelled`` (a task cancelled before
the move is dropped by the move itself). ``cancel`` makes one more round trip after the
script: by then Redis has written the message to every subscriber's socket, so a start
that follows a returned cancel on the same host always sees it.

A feed is *live* from its subscription's confirmation until any error on its
connection; while it is not, the consumer asks Redis at every start (the ``START``
script), and after it opens again, the tasks the consumer took before are asked about
too: what was published in between is lost.
"""

from __future__ import annotations

import logging
import select
import ssl
from collections import OrderedDict
from typing import Any

from redis.exceptions import RedisError

from asynctask_redis.connection import pack

logger = logging.getLogger("asynctask.redis")

#: cancelled ids kept: a cancel matters only until the consumer starts that task (it
#: holds at most its prefetch); the oldest are forgotten first
KEPT = 10_000


class CancelFeed:
    """A subscription to one queue's cancel channel on a connection of ``pool``."""

    def __init__(self, pool: Any, channel: str) -> None:
        self.pool = pool
        self.channel = channel
        self._conn: Any = None
        #: ids published as cancelled, oldest first
        self.cancelled: OrderedDict[str, None] = OrderedDict()
        #: whether ``poll`` emptied the connection since it opened (see ``heard``)
        self._polled = False

    @property
    def live(self) -> bool:
        """Whether every cancel published since the subscription was confirmed is here
        (once ``poll`` has run)."""
        return self._conn is not None

    def open(self) -> bool:
        """Subscribe and wait for the confirmation; whether the feed is live now."""
        if self._conn is not None:
            return True
        try:
            conn = self.pool.get_connection()
        except (RedisError, OSError) as exc:
            logger.debug("cancel feed %s: no connection (%s)", self.channel, exc)
            return False
        try:
            # RESP3 (redis-py's default) sends these as push messages: ask for them
            conn.send_packed_command([pack([("SUBSCRIBE", self.channel)])])
            reply = conn.read_response(push_request=True)
            if not isinstance(reply, list) or reply[0] != b"subscribe":
                raise RedisError(f"unexpected reply to SUBSCRIBE: {reply!r}")
        except (RedisError, OSError) as exc:
            logger.debug("cancel feed %s: could not subscribe (%s)", self.channel, exc)
            conn.disconnect()
            self.pool.release(conn)
            return False
        self._conn = conn
        return True

    def poll(self) -> bool:
        """Read every message already here (never waits); whether the feed is live."""
        conn = self._conn
        if conn is None:
            return False
        try:
            while conn.can_read(timeout=0):
                message = conn.read_response(push_request=True)
                if isinstance(message, list) and message[0] == b"message":
                    self._note(message[2].decode())
        except (RedisError, OSError, ValueError, IndexError) as exc:
            logger.info("cancel feed %s lost (%s); starts ask Redis until it is back", self, exc)
            self.close()
            return False
        return True

    def heard(self) -> bool:
        """``poll``, for a caller that asks often (a consumer's every start): once a poll
        has emptied the connection, one ``select`` that finds nothing new is enough."""
        if self._polled and self.quiet():
            return True
        self._polled = self.poll()
        return self._polled

    def quiet(self) -> bool:
        """Whether nothing has arrived since ``poll`` last emptied the connection: one
        ``select``, no read (``poll`` costs three system calls through redis-py's
        ``can_read``). Trust it only after a ``poll``: the subscription's reply may have
        brought more with it into the driver's buffer.

        Under TLS (``rediss://``) a message may also be decrypted already and held by the
        SSL object (``pending``), the socket having nothing more: ``select`` alone would
        say quiet and a start would miss that cancel. ``pending`` is a C call, no system
        call."""
        conn = self._conn
        sock = None if conn is None else getattr(conn, "_sock", None)
        if sock is None:
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return False
        return not select.select([sock], [], [], 0)[0]

    def _note(self, task_id: str) -> None:
        self.cancelled[task_id] = None
        if len(self.cancelled) > KEPT:
            self.cancelled.popitem(last=False)

    def close(self) -> None:
        """Unsubscribe by dropping the connection (it goes back to the pool closed)."""
        conn, self._conn = self._conn, None
        self._polled = False
        if conn is not None:
            conn.disconnect()
            self.pool.release(conn)

    def __repr__(self) -> str:
        return f"CancelFeed({self.channel!r})"
