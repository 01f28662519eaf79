"""Connections: a ``Link`` (one connection, one channel with publisher confirms), the
thread that keeps idle links' heartbeats going, and the pool of producer links.

py-amqp connections are not thread-safe, so each link has a lock: the thread using a link
holds it for the whole operation, and the heartbeat thread only *tries* the lock. A
thread blocked on a link (a consumer in ``reserve``) reads the socket itself and keeps
the heartbeats going in its own loop; the heartbeat thread serves the links nobody is
using (pooled producer links, and a consumer's link while its worker runs a task).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import struct
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import amqp.exceptions
import amqp.transport
import kombu.connection

from asynctask_amqp.params import ConnectionParams

logger = logging.getLogger("asynctask.amqp")

#: kombu's connection class (untyped: kombu ships no annotations for it)
KombuConnection: Any = kombu.connection.Connection


def tick_interval(params: ConnectionParams) -> float:
    """Seconds between heartbeat checks: a quarter heartbeat, at most one second."""
    return min(1.0, params.heartbeat / 4)


class Unroutable(Exception):
    """The broker returned published messages: their queue does not exist (any more)."""


class ConfirmsLost(Exception):
    """The connection failed before the broker confirmed everything published.

    ``confirmed`` counts the leading messages the broker did confirm.
    """

    def __init__(self, confirmed: int, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.confirmed = confirmed
        self.cause = cause


class Nacked(Exception):
    """The broker refused (nack) some of the published messages."""


#: what the driver raises (and our wrappers of it): mapped to our errors at the boundary
DRIVER_ERRORS = (amqp.exceptions.AMQPError, OSError, EOFError, ConfirmsLost, Unroutable, Nacked)


class Link:
    """One connection with one channel in confirm mode; see the module docstring.

    ``name`` is the connection's client-provided name, which the broker shows
    (``rabbitmqctl list_connections client_properties``, the management UI): an operator
    sees which process and queue a connection serves, and can close exactly that one.
    """

    def __init__(self, params: ConnectionParams, name: str = "") -> None:
        self.params = params
        self.name = name or f"asynctask producer (pid {os.getpid()} on {socket.gethostname()})"
        self.lock = threading.Lock()
        #: bumped on every (re)connection: a delivery tag is only good on its generation
        self.generation = 0
        #: told the generation when a connection opens, and 0 when it is found lost (the
        #: link's lock held both times): a relay publishes it to its worker
        self.on_generation: Callable[[int], None] | None = None
        self.broken = False
        self.channel: Any = None
        self._raw: Any = None  # py-amqp's Connection
        #: a poll object on a plain TCP connection's socket (``pump``); None on TLS
        self._poller: Any = None
        self._unconfirmed: dict[int, None] = {}  # delivery tags, oldest first
        self._nacked: set[int] = set()
        self._returned = 0
        self._next_tag = 1
        #: py-amqp wants heartbeat_tick() about once a second: not on every frame
        self.tick_every = tick_interval(params)
        self._next_tick = 0.0
        #: the index in ``params.hosts`` of the broker that served last
        self._host = 0

    @property
    def is_open(self) -> bool:
        """Whether the link has a connection it believes alive."""
        return self._raw is not None and not self.broken

    def open(self) -> None:
        """Connect and open the channel (driver errors propagate).

        kombu establishes the connection (its URI defaults, transport options); after
        that the link holds py-amqp's connection itself: kombu's ``connection`` attribute
        reconnects behind our back when the connection is gone, which we must not let
        happen (the channel, its consumer and its delivery tags would be lost unseen).

        With several brokers in the URI (a cluster's nodes), the one that served last is
        tried first, then the others in turn; the last one's error propagates.
        """
        self.discard()
        count = len(self.params.hosts)
        for step in range(count):
            index = (self._host + step) % count
            try:
                self._open_at(index)
            except DRIVER_ERRORS as exc:
                if step == count - 1:
                    raise
                logger.debug("%s: %s; trying the next", self.params.describe(index), exc)
                continue
            self._host = index
            return

    def _open_at(self, index: int) -> None:
        kwargs = self.params.kombu_kwargs(index)
        kwargs["transport_options"] = {
            **kwargs["transport_options"],
            "client_properties": {"connection_name": self.name},
        }
        conn = KombuConnection(**kwargs)
        conn.ensure_connection(max_retries=0, reraise_as_library_errors=False)
        raw = conn.connection
        try:
            channel = raw.channel()
            channel.events["basic_ack"].add(self._on_ack)
            channel.events["basic_nack"].add(self._on_nack)
            channel.events["basic_return"].add(self._on_return)
        except BaseException:
            _collect(raw)
            raise
        self._poller = None
        if buffered_reads(raw):
            self._poller = select.poll()
            self._poller.register(raw.transport.sock.fileno(), select.POLLIN)
        self._raw, self.channel, self.broken = raw, channel, False
        self.generation += 1
        self.select_confirms()
        if self.on_generation is not None:
            self.on_generation(self.generation)

    def select_confirms(self) -> None:
        """Put the channel in confirm mode; also after py-amqp reopened it on a channel
        error (the broker closes a channel on 404 or 406, and its state goes with it)."""
        self.channel.confirm_select()
        self._unconfirmed.clear()
        self._nacked.clear()
        self._returned = 0
        self._next_tag = 1

    def close(self) -> None:
        """Close politely (queued acks and rejects reach the broker first)."""
        raw, self._raw, self.channel, self._poller = self._raw, None, None, None
        if raw is None:
            return
        try:
            raw.transport.sock.settimeout(self.params.connect_timeout)
            raw.close()
        except Exception as exc:
            logger.debug("%s: closing: %s", self.params.describe(), exc)
        finally:
            _collect(raw)  # a no-op after a clean close

    def discard(self) -> None:
        """Drop the connection without a word to the broker (it is dead, or not ours)."""
        raw, self._raw, self.channel, self._poller = self._raw, None, None, None
        if raw is not None:
            self._note_lost()
            _collect(raw)

    def _note_lost(self) -> None:
        if self.on_generation is not None:
            self.on_generation(0)

    @property
    def connection(self) -> Any:
        """py-amqp's connection (for a second channel)."""
        return self._raw

    # -- reading --------------------------------------------------------------------------

    def wait(self, timeout: float) -> None:
        """Read what the broker sends for up to ``timeout`` seconds (returns after the
        first frame), then keep the heartbeats going."""
        with suppress(TimeoutError):
            self._raw.drain_events(timeout=max(timeout, 0.0))
        self._heartbeat()

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now >= self._next_tick:
            self._next_tick = now + self.tick_every
            self._raw.heartbeat_tick()

    def pump(self) -> None:
        """Read everything already received, without waiting; keep heartbeats going.

        On a plain TCP link (``buffered_reads``) one ``poll`` asks whether the socket has
        anything, one ``read`` takes it (up to ``PUMP_SIZE``), and every whole frame is
        handed to py-amqp's frame handler from the buffer: no timeout set and put back,
        no ``recv`` that finds nothing, none of py-amqp's per-frame ``blocking_read``
        (a relay's drain at prefetch 4, per task: 4 ``ioctl`` and ``recvfrom`` and about
        45 Python calls fewer, ``bench/relaycost.py``). Other transports (TLS): the
        socket made non-blocking once for the whole pump, then py-amqp's
        ``drain_events(timeout=0)``, which would otherwise set the timeout and put it
        back around every frame (two ``ioctl`` each)."""
        if self._poller is not None:
            self._take_frames()
        else:
            self._drain_nonblocking()
        self._heartbeat()

    def _take_frames(self) -> None:
        """``pump`` on a plain TCP link: see there."""
        raw = self._raw
        transport = raw.transport
        handle = raw.on_inbound_frame
        fd = transport.sock.fileno()
        for _ in range(64):  # a bound: a broker that never stops sending
            buffer: bytes = transport._read_buffer
            if not _whole_frame(buffer):
                if not self._poller.poll(0):
                    return
                chunk = os.read(fd, PUMP_SIZE)
                if not chunk:
                    transport.connected = False
                    raise OSError("Server unexpectedly closed connection")
                buffer = transport._read_buffer = buffer + chunk
                if not _whole_frame(buffer):
                    continue
            while len(buffer) >= _FRAME_HEADER + 1:
                frame_type, channel, size = _HEADER.unpack_from(buffer)
                end = _FRAME_HEADER + size
                if len(buffer) <= end:
                    break
                if buffer[end] != _FRAME_END:
                    transport.connected = False
                    raise amqp.exceptions.UnexpectedFrame(
                        f"Received frame_end {buffer[end]:#04x} while expecting 0xce"
                    )
                # taken out first: what the handler does (a close, a read of its own)
                # sees the buffer without this frame
                transport._read_buffer = buffer[end + 1 :]
                handle((frame_type, channel, buffer[_FRAME_HEADER:end]))
                if self._raw is not raw or raw._transport is not transport:
                    return  # the handler closed the connection
                buffer = transport._read_buffer

    def _drain_nonblocking(self) -> None:
        """``pump`` on a TLS link: see there."""
        sock = self._raw.transport.sock
        before = sock.gettimeout()
        sock.settimeout(0)
        try:
            for _ in range(1000):
                try:
                    self._raw.drain_events(timeout=0)
                except TimeoutError:
                    break
        finally:
            # not on a socket py-amqp closed meanwhile (a connection.close read here):
            # its error, not EBADF, is the one that tells what happened
            transport = None if self._raw is None else self._raw.transport
            if transport is not None and transport.sock is sock:
                sock.settimeout(before)

    def has_frame(self) -> bool:
        """Whether a whole frame waits in the read buffer (``buffered_reads``): the
        socket's readiness does not show it."""
        return _whole_frame(getattr(self._raw.transport, "_read_buffer", b""))

    def tick(self) -> None:
        """From the heartbeat thread: pump the link if nobody is using it."""
        if not self.lock.acquire(blocking=False):
            return
        try:
            if self.is_open:
                self.pump()
        except Exception as exc:
            logger.debug("%s: connection lost while idle: %s", self.params.describe(), exc)
            self.broken = True
            self._note_lost()
        finally:
            self.lock.release()

    # -- publishing with confirms ---------------------------------------------------------

    def publish(self, exchange: str, routing_key: str, messages: Sequence[Any]) -> None:
        """Publish in order (mandatory) and wait until the broker confirms them all.

        Raises ``ConfirmsLost`` if the connection fails on the way, ``Unroutable`` if the
        broker returned any, ``Nacked`` if it refused any.
        """
        first = self._next_tag
        returned = self._returned
        try:
            for message in messages:
                self.channel.basic_publish(
                    message, exchange=exchange, routing_key=routing_key, mandatory=True
                )
                self._unconfirmed[self._next_tag] = None
                self._next_tag += 1
            last = self._next_tag - 1
            deadline = time.monotonic() + self.params.confirm_timeout
            while self._unconfirmed and next(iter(self._unconfirmed)) <= last:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"no publisher confirm within {self.params.confirm_timeout:g} s"
                    )
                self.wait(min(left, 1.0))
        except Exception as exc:
            pending = next(iter(self._unconfirmed), self._next_tag)
            raise ConfirmsLost(max(0, min(pending, self._next_tag) - first), exc) from exc
        if self._returned != returned:
            raise Unroutable(f"{exchange!r}/{routing_key!r}: no queue took the message")
        nacked = [tag for tag in self._nacked if first <= tag <= last]
        if nacked:
            self._nacked.difference_update(nacked)
            raise Nacked(f"the broker refused {len(nacked)} of {len(messages)} messages")

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._nacked.update(self._settle(tag, multiple))

    def _settle(self, tag: int, multiple: bool) -> list[int]:
        if not multiple:
            return [tag] if self._unconfirmed.pop(tag, 0) is None else []
        done = []
        while self._unconfirmed and (oldest := next(iter(self._unconfirmed))) <= tag:
            del self._unconfirmed[oldest]
            done.append(oldest)
        return done

    def _on_return(self, exc: Any, exchange: str, routing_key: str, message: Any) -> None:
        self._returned += 1


#: bytes of a frame's header (type, channel, size), its layout, and its end octet
_FRAME_HEADER = 7
_HEADER = struct.Struct(">BHI")
_FRAME_END = 0xCE
#: bytes a pump asks of the socket at most, per read
PUMP_SIZE = 1 << 16
#: bytes asked of the socket at least, per read (``buffered_reads``)
READ_SIZE = 8192


def _whole_frame(buffer: bytes) -> bool:
    """Whether ``buffer`` starts with a whole frame (header, payload, end octet)."""
    if len(buffer) < _FRAME_HEADER:
        return False
    return len(buffer) >= int.from_bytes(buffer[3:7], "big") + _FRAME_HEADER + 1


def buffered_reads(raw: Any) -> bool:
    """Make py-amqp's plain TCP transport read ahead: its ``_read(n)`` asks the socket
    for exactly ``n`` bytes, three ``recv`` a frame (header, payload, end byte), nine a
    delivered message; this one asks for at least ``READ_SIZE`` and keeps the rest in
    the transport's own buffer, which its ``read_frame`` already reads first (a relay's
    drain at prefetch 4: 11.3 ``recvfrom`` a task before, strace). What waits there is
    not seen by ``select`` on the socket: ``Link.has_frame`` tells. TLS transports are
    left as they are (their reads go through the SSL object's own buffer): False."""
    transport = raw.transport
    if type(transport) is not amqp.transport.TCPTransport:
        return False
    transport._read = types.MethodType(_read_ahead, transport)
    return True


def _read_ahead(self: Any, n: int, initial: bool = False) -> bytes:
    """py-amqp's ``TCPTransport._read`` (5.x), reading ahead (``buffered_reads``)."""
    recv = self._quick_recv
    buffer = self._read_buffer
    try:
        while len(buffer) < n:
            try:
                chunk = recv(max(n - len(buffer), READ_SIZE))
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EINTR):
                    if initial and self.raise_on_initial_eintr:
                        raise TimeoutError() from exc
                    continue
                raise
            if not chunk:
                raise OSError("Server unexpectedly closed connection")
            buffer += chunk
    except BaseException:
        self._read_buffer = buffer
        raise
    result, self._read_buffer = buffer[:n], buffer[n:]
    return bytes(result)


def _collect(raw: Any) -> None:
    """Free a py-amqp connection's socket without talking to the broker."""
    try:
        raw.collect()
    except Exception as exc:  # nothing more can be done about a dead socket
        logger.debug("closing a dead connection: %s", exc)


class Heartbeats:
    """One daemon thread per transport that pumps every idle link about once a second."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._links: weakref.WeakSet[Link] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def add(self, link: Link) -> None:
        """Keep ``link``'s heartbeats going while it lives."""
        with self._lock:
            if self._pid != os.getpid():
                # forked: the parent's thread is not ours, nor are its links' sockets
                self._pid, self._thread = os.getpid(), None
                self._links = weakref.WeakSet()
            self._links.add(link)
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="asynctask-amqp-heartbeats", daemon=True
                )
                self._thread.start()

    def discard(self, link: Link) -> None:
        """Forget ``link``."""
        with self._lock:
            self._links.discard(link)

    def stop(self) -> None:
        """End the thread (at transport close)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.interval * 4)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                links = list(self._links)
            for link in links:
                link.tick()


class LinkPool:
    """Idle producer links, last used first; a thread takes one for each operation."""

    def __init__(self, params: ConnectionParams, heartbeats: Heartbeats, size: int = 8) -> None:
        self.params = params
        self.heartbeats = heartbeats
        self.size = size
        self._idle: list[Link] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    @contextmanager
    def use(self) -> Iterator[Link]:
        """A link of our own, open, locked for the caller; returned to the pool after."""
        link = self._checkout()
        try:
            with link.lock:
                if not link.is_open:
                    link.open()
                    self.heartbeats.add(link)
                yield link
        finally:
            self._checkin(link)

    def _checkout(self) -> Link:
        with self._lock:
            if os.getpid() != self._pid:
                # forked: the sockets belong to the parent; forget them unclosed
                self._idle.clear()
                self._pid = os.getpid()
            while self._idle:
                link = self._idle.pop()
                if link.is_open:
                    return link
                link.discard()
        return Link(self.params)

    def _checkin(self, link: Link) -> None:
        with self._lock:
            if link.is_open and len(self._idle) < self.size:
                self._idle.append(link)
                return
        self.heartbeats.discard(link)
        link.close() if link.is_open else link.discard()

    def close(self) -> None:
        """Close every idle link."""
        with self._lock:
            idle, self._idle = self._idle, []
        for link in idle:
            self.heartbeats.discard(link)
            with link.lock:
                link.close() if link.is_open else link.discard()
