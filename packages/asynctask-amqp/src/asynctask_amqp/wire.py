"""The relay's wire format: JSON objects over a stream socket, each framed by its length.

A frame is a 4-byte big-endian length, then that many bytes of UTF-8 JSON text (one
object). JSON, not pickle: the relay runs code only from its own package, whatever the
peer sends. Both ends of a worker's socketpair use these two functions; see
``asynctask_amqp.relay`` for the messages.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

_LENGTH = struct.Struct(">I")

#: a frame longer than this is a broken peer, not a message (payloads are far smaller)
MAX_FRAME = 1 << 30


class PeerGone(Exception):
    """The other end closed the socket in the middle of a frame, or sent garbage."""


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    """Write one frame (raises ``OSError`` if the peer is gone)."""
    body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
    sock.sendall(_LENGTH.pack(len(body)) + body)


def receive(sock: socket.socket) -> dict[str, Any] | None:
    """Read one frame; ``None`` when the peer closed the socket between frames."""
    header = _read(sock, _LENGTH.size, at_start=True)
    if header is None:
        return None
    (length,) = _LENGTH.unpack(header)
    if length > MAX_FRAME:
        raise PeerGone(f"a frame of {length} bytes: the peer is not speaking our protocol")
    body = _read(sock, length, at_start=False) if length else b""
    try:
        message = json.loads(body or b"null")
    except ValueError as exc:
        raise PeerGone(f"a frame that is not JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise PeerGone(f"a frame that is not a JSON object: {message!r:.80}")
    return message


def _read(sock: socket.socket, size: int, at_start: bool) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            if at_start and not chunks:
                return None
            raise PeerGone(f"the peer closed the socket {len(chunks)} bytes into a frame")
        chunks += chunk
    return bytes(chunks)
