"""The relay's wire format: JSON objects over a stream socket, each framed by its length,
and two words of memory that the worker and its relay share.

A frame is a 4-byte big-endian length, then that many bytes of UTF-8 JSON text (one
object). JSON, not pickle: the relay runs code only from its own package, whatever the
peer sends. The relay's answers to its worker go the other way as ``marshal`` data
(``send_data``: the body is ``MARSHALLED`` then ``marshal.dumps`` of the object), which
only a ``Reader(trusted=True)`` accepts: the worker's, reading the relay it started
with its own interpreter (one ``marshal`` version; ``marshal.loads`` builds data, it
runs nothing). Why: a task handed over to an idle worker is decoded in a process that
has just woken, with cold caches, where ``json.loads`` of a one-task answer took
~100 us and ``marshal.loads`` ~30 us (``json.dumps`` ~95 against ~30 in the relay:
200 reads 10 ms apart, load ~2); hot, 2.7 and 4 us against about 1. See
``asynctask_amqp.relay`` for the messages and for what the words say (``SharedWords``).
"""

from __future__ import annotations

import json
import marshal
import mmap
import os
import socket
import struct
import tempfile
from typing import Any

_LENGTH = struct.Struct(">I")

#: a frame longer than this is a broken peer, not a message (payloads are far smaller)
MAX_FRAME = 1 << 30


class PeerGone(Exception):
    """The other end closed the socket in the middle of a frame, or sent garbage."""


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    """Write one frame (raises ``OSError`` if the peer is gone)."""
    body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
    write(sock, _LENGTH.pack(len(body)) + body)


#: the first byte of a frame body that is ``marshal`` data (a JSON object starts with "{")
MARSHALLED = b"M"


def send_data(sock: socket.socket, message: dict[str, Any]) -> None:
    """Write one frame of ``marshal`` data (raises ``OSError`` if the peer is gone): only
    a relay to its worker, whose ``Reader`` is ``trusted`` (see the module docstring)."""
    body = MARSHALLED + marshal.dumps(message)
    write(sock, _LENGTH.pack(len(body)) + body)


def send_settled(sock: socket.socket, acks: list[int], skips: list[int]) -> None:
    """Write ``{"op": "settled", "acks": [...], "skips": [...]}`` (as ``send`` would),
    formatted by hand: the worker sends one a task, and ``json.dumps`` made it 7 of the
    worker's 90 Python calls a task."""
    text = '{"op":"settled"'
    if acks:
        text += ',"acks":[' + ",".join(map(str, acks)) + "]"
    if skips:
        text += ',"skips":[' + ",".join(map(str, skips)) + "]"
    body = (text + "}").encode()
    write(sock, _LENGTH.pack(len(body)) + body)


def write(sock: socket.socket, data: bytes) -> None:
    """``sock.sendall(data)`` with one system call when the socket takes it all, as it
    does a frame this small: a socket with a timeout (the worker's) polls before each
    ``send`` in ``sendall``, one ``poll`` more a frame; ``os.write`` does not, and the
    rest, if any, goes through ``sendall`` (which waits, with the socket's timeout)."""
    try:
        sent = os.write(sock.fileno(), data)
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        sock.sendall(data[sent:])


class Reader:
    """Reads frames from a socket, many per ``recv`` when the peer sent several (a relay
    often finds an ack and the next reserve waiting together): a syscall saved each."""

    def __init__(self, sock: socket.socket, trusted: bool = False) -> None:
        """``trusted``: the peer may send ``marshal`` frames (``send_data``): a worker
        reading its own relay, never the relay reading its worker."""
        self.sock = sock
        self.trusted = trusted
        self._buffer = bytearray()

    def ready(self) -> bool:
        """Whether a whole frame is buffered (``receive`` will not block)."""
        if len(self._buffer) < _LENGTH.size:
            return False
        length: int = _LENGTH.unpack_from(self._buffer)[0]
        return len(self._buffer) >= _LENGTH.size + length

    def receive(self) -> dict[str, Any] | None:
        """Read one frame; ``None`` when the peer closed the socket between frames."""
        if not self._fill(_LENGTH.size):
            return None
        (length,) = _LENGTH.unpack_from(self._buffer)
        if length > MAX_FRAME:
            raise PeerGone(f"a frame of {length} bytes: the peer is not speaking our protocol")
        if not self._fill(_LENGTH.size + length):
            raise PeerGone(f"the peer closed the socket {len(self._buffer)} bytes into a frame")
        body = bytes(self._buffer[_LENGTH.size : _LENGTH.size + length])
        del self._buffer[: _LENGTH.size + length]
        if body[:1] == MARSHALLED:
            if not self.trusted:
                raise PeerGone("a marshal frame from a peer that may only send JSON")
            try:
                message = marshal.loads(memoryview(body)[1:])
            except (ValueError, EOFError, TypeError) as exc:
                raise PeerGone(f"a marshal frame that does not load: {exc}") from exc
        else:
            try:
                message = json.loads(body or b"null")
            except ValueError as exc:
                raise PeerGone(f"a frame that is not JSON: {exc}") from exc
        if not isinstance(message, dict):
            raise PeerGone(f"a frame that is not a JSON object: {message!r:.80}")
        return message

    def _fill(self, size: int) -> bool:
        """Buffer at least ``size`` bytes; False if the peer closed before any arrived."""
        while len(self._buffer) < size:
            chunk = self.sock.recv(max(size - len(self._buffer), 1 << 16))
            if not chunk:
                if self._buffer:
                    raise PeerGone(
                        f"the peer closed the socket {len(self._buffer)} bytes into a frame"
                    )
                return False
            self._buffer += chunk
        return True


class SharedWords:
    """Two 64-bit words in a file mapping that the worker and its relay both hold:
    ``generation``, written by the relay only, and ``taken``, written by the worker only.

    Read and written without a system call (a word each, 8-byte aligned: one load or
    store, never seen torn). The file is a ``memfd`` (a ``tempfile`` where there is
    none): nothing on disk, gone with the last descriptor and mapping.
    """

    SIZE = 16

    def __init__(self, fd: int) -> None:
        self._map = mmap.mmap(fd, self.SIZE)
        self._words = memoryview(self._map).cast("q")

    @staticmethod
    def new_file() -> int:
        """A descriptor of a new zeroed file of ``SIZE`` bytes, to map on both sides."""
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("asynctask-relay", os.MFD_CLOEXEC)
        else:  # pragma: no cover (not Linux)
            with tempfile.TemporaryFile() as file:
                fd = os.dup(file.fileno())
        os.ftruncate(fd, SharedWords.SIZE)
        return fd

    @property
    def generation(self) -> int:
        """The relay's connection generation; 0 while it has none it trusts."""
        return int(self._words[0])

    @generation.setter
    def generation(self, value: int) -> None:
        self._words[0] = value

    def set_generation(self, value: int) -> None:
        """``generation = value`` (a callback for ``Link.on_generation``)."""
        self._words[0] = value

    @property
    def taken(self) -> int:
        """The number of the task the worker took last (they are taken in order)."""
        return int(self._words[1])

    @taken.setter
    def taken(self, value: int) -> None:
        self._words[1] = value

    def close(self) -> None:
        """Unmap (the file goes with the last holder)."""
        self._words.release()
        self._map.close()
