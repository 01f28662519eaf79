"""Ready counts of many queues in a few round trips: passive declares, pipelined.

A passive ``queue.declare`` is the only way AMQP tells whether a queue exists and how
many messages are ready in it, and it is a round trip; ``queues()`` asks it of every
queue the registry names, its failed store and its old per-queue ladders (4 a queue).
One after another, that was 4 round trips a queue (1,000 queues: seconds). They cannot
simply be pipelined on one channel: a missing queue's 404 closes the channel, and the
broker drops whatever was sent on it after. So each question goes on a channel of its
own: up to ``WINDOW`` channels are opened at once, each asks one name, and a channel
that answers asks the next (one the broker closed with a 404 is opened again on the
spot, pipelined: ``channel.close-ok``, ``channel.open``, the next declare, one write
each, no waiting). Every question is in flight beside ``WINDOW - 1`` others: a census
of ``n`` names costs about ``n / WINDOW`` round trips, not ``n``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from typing import Any

import amqp.exceptions
from amqp import spec
from amqp.channel import Channel

from asynctask_amqp.link import Link

#: channels open at once for a census (RabbitMQ allows 2,047 a connection by default)
WINDOW = 200

#: seconds a census may wait for the broker's answers before it counts as lost
CENSUS_TIMEOUT = 30.0

#: queue.declare's arguments: ticket, queue, passive, durable, exclusive, auto_delete,
#: nowait, arguments (py-amqp's ``Channel.queue_declare`` signature)
_DECLARE = "BsbbbbbF"


def ready_counts(link: Link, names: Iterable[str]) -> dict[str, int | None]:
    """Ready messages of each queue of ``names`` (``None``: it does not exist), asked on
    channels of their own beside ``link``'s (whose lock the caller holds).

    A refusal other than 404 (an exclusive queue of another connection: 405) is raised
    as py-amqp's error, as a passive declare's would be; the connection is then dropped
    (``link.broken``), its channels with it.
    """
    census = _Census(link, names)
    try:
        census.run()
    except BaseException:
        link.broken = True  # channels of ours may still be open on it, or answering
        raise
    return census.found


class _Census:
    """One ``ready_counts`` call: its channels, its questions, its answers."""

    def __init__(self, link: Link, names: Iterable[str]) -> None:
        self.link = link
        self.todo: deque[str] = deque(dict.fromkeys(names))
        self.found: dict[str, int | None] = {}
        #: the name each channel asks about, by channel
        self.asking: dict[Channel, str] = {}
        self.error: BaseException | None = None
        self.channels: list[Channel] = []

    def run(self) -> None:
        connection = self.link.connection
        room = int(connection.channel_max) - len(connection.channels) - 1
        width = max(1, min(WINDOW, len(self.todo), room))
        for _ in range(width if self.todo else 0):
            channel = Channel(connection, auto_decode=False)
            self.channels.append(channel)
            channel._callbacks[spec.Queue.DeclareOk] = self._answered(channel)
            channel._callbacks[spec.Channel.Close] = self._refused(channel)
            channel.send_method(spec.Channel.Open, "s", ("",))
            self._ask(channel)
        self._wait_until(lambda: not self.asking)
        if self.error is not None:
            raise self.error
        self._close()

    def _ask(self, channel: Channel) -> None:
        if not self.todo or self.error is not None:
            return
        name = self.todo.popleft()
        self.asking[channel] = name
        channel.send_method(
            spec.Queue.Declare, _DECLARE, (0, name, True, False, False, False, False, None)
        )

    def _answered(self, channel: Channel) -> Any:
        def on_declare_ok(queue: str, message_count: int, consumer_count: int) -> None:
            self.found[self.asking.pop(channel)] = int(message_count)
            self._ask(channel)

        return on_declare_ok

    def _refused(self, channel: Channel) -> Any:
        def on_close(reply_code: int, reply_text: str, class_id: int, method_id: int) -> None:
            name = self.asking.pop(channel, None)
            channel.send_method(spec.Channel.CloseOk)
            channel.is_open = False
            if reply_code != 404 or name is None:
                self.error = self.error or amqp.exceptions.error_for_code(
                    reply_code, reply_text, (class_id, method_id), amqp.exceptions.ChannelError
                )
            else:
                self.found[name] = None
            if self.todo and self.error is None:
                channel.send_method(spec.Channel.Open, "s", ("",))  # the same number again
                self._ask(channel)
            else:
                channel.collect()

        return on_close

    def _close(self) -> None:
        """Close our channels still open, pipelined, and wait for the broker's close-oks
        (``Channel._on_close_ok`` collects each)."""
        open_ones = [c for c in self.channels if c.connection is not None]
        for channel in open_ones:
            channel.is_closing = True
            channel.send_method(spec.Channel.Close, "BsBB", (0, "", 0, 0))
        self._wait_until(lambda: all(c.connection is None for c in open_ones))

    def _wait_until(self, done: Any) -> None:
        deadline = time.monotonic() + CENSUS_TIMEOUT
        while not done() and self.error is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"the broker did not answer a census within {CENSUS_TIMEOUT:g} s"
                )
            self.link.wait(min(left, 1.0))
