"""A TCP proxy to PostgreSQL whose answers arrive late: what a loaded machine does to a
notification, made certain.

Every byte the server sends reaches the client ``delay`` seconds later, in order; what the
client sends goes through at once. A test points one transport at ``port`` and another
straight at the server: whatever the server sends the slow one (a NOTIFY above all) is on
its way for ``delay`` seconds, which a loaded machine gives only sometimes.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager


class SlowLink:
    """Accepts on ``127.0.0.1:port``; each connection is joined to ``host:server_port``."""

    def __init__(self, host: str, server_port: int, delay: float) -> None:
        self.target = (host, server_port)
        self.delay = delay
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="slowlink-accept").start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(self.target)
            except OSError:
                return
            self._sockets += [client, server]
            for target, args in (
                (self._pipe, (client, server)),
                (self._late, (server, client)),
            ):
                threading.Thread(target=target, args=args, daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        """Client to server, at once."""
        with _ends(source, sink):
            while data := source.recv(65536):
                sink.sendall(data)

    def _late(self, source: socket.socket, sink: socket.socket) -> None:
        """Server to client, each chunk ``delay`` seconds after it came, in order."""
        chunks: deque[tuple[float, bytes]] = deque()
        arrived = threading.Condition()

        def deliver() -> None:
            with _ends(source, sink):
                while True:
                    with arrived:
                        while not chunks:
                            arrived.wait()
                        due, data = chunks.popleft()
                    if not data:
                        return
                    time.sleep(max(0.0, due - time.monotonic()))
                    sink.sendall(data)

        threading.Thread(target=deliver, daemon=True).start()
        data = b"x"
        while data:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            with arrived:
                chunks.append((time.monotonic() + self.delay, data))
                arrived.notify()

    def close(self) -> None:
        """Stop accepting and cut every connection."""
        self._closed = True
        for sock in self._sockets:
            _shut(sock)


@contextmanager
def _ends(*sockets: socket.socket) -> Iterator[None]:
    """Whatever ends one direction (EOF, an error) closes both sockets."""
    try:
        yield
    except OSError:
        pass
    finally:
        for sock in sockets:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
