"""``asynctask_amqp.wire``: the relay's answers travel as ``marshal`` data, which only
the worker's reader (``trusted``) accepts; the relay reads JSON only, whatever its
peer sends."""

from __future__ import annotations

import socket
import threading

import pytest

from asynctask_amqp.wire import PeerGone, Reader, send, send_data


def test_a_trusted_reader_takes_marshal_frames_whole_and_equal_to_their_json():
    # Given an answer holding what a delivery carries (unicode, floats, nesting, null)
    # and one far larger than a read
    answer = {
        "deliveries": [
            {
                "n": 7,
                "generation": 3,
                "id": "0193a2b4",
                "payload": {"s": "été ✓", "f": 0.1 + 0.2, "l": [1, None, {"x": True}]},
                "attempt": 2,
                "submitted_at": 1765000000.123456,
                "headers": {"sig": "abc"},
                "redelivered": False,
            }
        ]
    }
    big = {"deliveries": [{"payload": {"pad": "x" * 300_000}}]}
    ours, theirs = socket.socketpair()
    reader = Reader(ours, trusted=True)
    # When the relay sends them as marshal data (the big one from another thread: it
    # fills the socket's buffer), then a JSON frame
    sender = threading.Thread(
        target=lambda: [send_data(theirs, answer), send_data(theirs, big), send(theirs, answer)]
    )
    sender.start()
    # Then each arrives whole, equal to what was sent, as the JSON frame does
    assert reader.receive() == answer
    assert reader.receive() == big
    assert reader.receive() == answer
    sender.join()
    ours.close()
    theirs.close()


def test_the_relays_reader_refuses_a_marshal_frame():
    # Given the relay's reader (not trusted: its peer may be anything)
    ours, theirs = socket.socketpair()
    reader = Reader(ours)
    # When a marshal frame arrives
    send_data(theirs, {"op": "close"})
    # Then it is a broken peer, not a request
    with pytest.raises(PeerGone, match="marshal"):
        reader.receive()
    ours.close()
    theirs.close()
