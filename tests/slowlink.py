"""A TCP proxy to a server (PostgreSQL, Redis) whose bytes arrive late one way: what a
loaded machine does now and then, made certain.

By default every byte the server sends reaches the client ``delay`` seconds later, in
order; what the client sends goes through at once. A test points one transport at
``port`` and another straight at the server: whatever the server sends the slow one (a
NOTIFY above all) is on its way for ``delay`` seconds, which a loaded machine gives only
sometimes.

With ``upstream=True`` it is the other way: what the client sends reaches the server
``delay`` seconds later, and what is still on its way when the client's end closes (a
killed process) never arrives, as a connection reset drops the bytes the server had
not read yet. A write sent without waiting for its reply is then lost with its process
for certain, where the machine loses it only sometimes.
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

    def __init__(
        self, host: str, server_port: int, delay: float, *, upstream: bool = False
    ) -> None:
        self.target = (host, server_port)
        self.delay = delay
        self.upstream = upstream
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
            late, at_once = ((client, server), (server, client))[:: 1 if self.upstream else -1]
            for target, args in ((self._pipe, at_once), (self._late, late)):
                threading.Thread(target=target, args=args, daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        """The quick way, at once."""
        with _ends(source, sink):
            while data := source.recv(65536):
                sink.sendall(data)

    def _late(self, source: socket.socket, sink: socket.socket) -> None:
        """The slow way, each chunk ``delay`` seconds after it came, in order; upstream,
        what is on its way when the client's end closes is dropped."""
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
                if not data and self.upstream:
                    chunks.clear()  # the client is gone: what it sent last never arrives
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
