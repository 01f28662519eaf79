"""Our own reading of the one-by-one submit's replies (``connection.reply_to`` and
``exec_packed``) against a scripted peer: a socket pair, no server. Whatever the peer
sends, the caller gets what redis-py's ``read_response`` would give or raise (RESP3,
redis-py's default and this transport's)."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Iterator, Sequence

import pytest
import redis
from redis.exceptions import ResponseError

from asynctask_redis.connection import exec_packed, own_reading, reply_to

PUSHED = re.compile(rb"\+OK\r\n(?:\+QUEUED\r\n){3}\*3\r\n\+OK\r\n:\d+\r\n:\d+\r\n")
EXEC_OK = [b"+OK\r\n", b"+QUEUED\r\n" * 3, b"*3\r\n+OK\r\n:7\r\n:0\r\n"]


@pytest.fixture
def pair() -> Iterator[tuple[redis.Connection, socket.socket]]:
    """A redis-py connection whose socket is one end of a pair; the test holds the other."""
    ours, peer = socket.socketpair()
    conn = redis.Connection(socket_timeout=5)
    conn._sock = ours
    conn._parser.on_connect(conn)
    yield conn, peer
    ours.close()
    peer.close()


def answer(peer: socket.socket, pieces: Sequence[bytes]) -> threading.Thread:
    """Read the command, then send ``pieces`` one write each, a moment apart."""
    done = threading.Event()

    def run() -> None:
        peer.recv(65536)
        with contextlib.suppress(OSError):  # a reader that failed may be gone
            for piece in pieces:
                peer.sendall(piece)
                done.wait(0.02)  # the reader's recv returns what came so far

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        ([b":1\r\n"], 1),
        ([b":4", b"2\r\n"], 42),
        ([b":", b"7\r\n"], 7),  # the colon alone: int(b"") raised ValueError
        ([b"$2\r\nok\r\n"], b"ok"),
        ([b"_\r\n"], None),
    ],
    ids=["whole", "in-pieces", "colon-alone", "bulk", "null"],
)
def test_reply_to_gives_what_redis_py_reads(pair, pieces, expected):
    conn, peer = pair
    thread = answer(peer, pieces)
    assert reply_to(conn, b"*1\r\n$4\r\nPING\r\n") == expected
    thread.join()


def test_reply_to_leaves_what_follows_a_whole_integer_to_the_parser(pair):
    """An integer reply followed, in the same read, by more (a RESP3 push) is not taken
    for the whole reply. Failed before: ``int()`` of the lot raised ValueError, which
    ``execute`` does not catch (the connection was neither dropped nor given back)."""
    conn, peer = pair
    push = b">2\r\n$7\r\nmessage\r\n$1\r\nx\r\n"
    thread = answer(peer, [b":1\r\n" + push])
    assert reply_to(conn, b"*1\r\n$4\r\nPING\r\n") == 1
    thread.join()
    assert conn._parser._buffer.unread_bytes() == len(push)  # kept for redis-py


def testown_reading_leaves_buffered_bytes_where_the_parser_was(pair):
    """Bytes already buffered send ``reply_to`` to redis-py's own path, and its parser
    reads on from where it was. Failed before: the check moved the read position to the
    end of the buffer, so redis-py would have skipped the unread bytes."""
    conn, _peer = pair
    buffer = conn._parser._buffer
    buffer._buffer.write(b":5\r\n")
    buffer._buffer.seek(0)
    assert own_reading(conn) is None
    assert buffer.get_pos() == 0 and buffer.unread_bytes() == 4


def test_reply_to_raises_an_error_reply_as_redis_py_does(pair):
    conn, peer = pair
    thread = answer(peer, [b"-NOSCRIPT No matching script\r\n"])
    with pytest.raises(redis.exceptions.NoScriptError):
        reply_to(conn, b"*1\r\n$4\r\nPING\r\n")
    thread.join()


def test_reply_to_raises_when_the_peer_closes(pair):
    """(A send to a closed socket raises ``OSError``: ``RedisTransport.execute`` takes
    it as a dropped connection, as it takes redis-py's ``ConnectionError``.)"""
    conn, peer = pair

    def close_after_the_command() -> None:
        peer.recv(65536)
        peer.close()

    thread = threading.Thread(target=close_after_the_command)
    thread.start()
    with pytest.raises(redis.ConnectionError):
        reply_to(conn, b"*1\r\n$4\r\nPING\r\n")
    thread.join()


@pytest.mark.parametrize(
    "pieces",
    [[b"".join(EXEC_OK)], EXEC_OK, [b"".join(EXEC_OK)[:-3], b"".join(EXEC_OK)[-3:]]],
    ids=["whole", "in-pieces", "cut-in-a-reply"],
)
def test_exec_packed_reads_a_stored_transaction(pair, pieces):
    conn, peer = pair
    thread = answer(peer, pieces)
    exec_packed(conn, b"(the transaction)", 3, PUSHED)
    thread.join()
    # the connection is in step: the next reply is the next call's
    thread = answer(peer, [b":5\r\n"])
    assert reply_to(conn, b"*1\r\n$4\r\nPING\r\n") == 5
    thread.join()


@pytest.mark.parametrize(
    ("pieces", "error"),
    [
        (
            [b"+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*3\r\n+OK\r\n-WRONGTYPE no\r\n:1\r\n"],
            "WRONGTYPE",
        ),
        (
            [b"+OK\r\n-ERR syntax\r\n+QUEUED\r\n+QUEUED\r\n-EXECABORT Transaction discarded\r\n"],
            "syntax",
        ),
    ],
    ids=["failed-inside-exec", "refused-when-queued"],
)
def test_exec_packed_raises_the_first_error(pair, pieces, error):
    conn, peer = pair
    thread = answer(peer, pieces)
    with pytest.raises(ResponseError, match=error):
        exec_packed(conn, b"(the transaction)", 3, PUSHED)
    thread.join()
