"""``bench.raw.kombu_uri``: the raw AMQP client and the server check take our URI's
query options away, so the bench runs with ``BENCH_AMQP_URI=...?relay=false``."""

from __future__ import annotations

from bench import raw


def test_our_options_are_left_out_and_kombus_stay():
    # Given a URI with asynctask's options beside options kombu reads as we do
    uri = (
        "amqp://guest:guest@127.0.0.1:5672//?relay=false&heartbeat=10"
        "&queue_type=quorum&asynctask_state=redis://x/1&connect_timeout=2"
    )

    # When it is made kombu's
    found = raw.kombu_uri(uri)

    # Then only kombu's own keywords stay (kombu refused relay: a TypeError, "server
    # unreachable" before)
    assert found == "amqp://guest:guest@127.0.0.1:5672//?heartbeat=10&connect_timeout=2"


def test_a_uri_with_only_our_options_has_no_query_left():
    assert raw.kombu_uri("amqp://127.0.0.1//?relay=false") == "amqp://127.0.0.1//"
    assert raw.kombu_uri("amqp://127.0.0.1//") == "amqp://127.0.0.1//"


def test_kombu_accepts_the_uri_with_relay_false():
    # (no connection: kombu reads its keywords when the Connection is made)
    connection = raw.kombu_module().Connection(raw.kombu_uri("amqp://127.0.0.1//?relay=false"))
    assert connection.hostname == "127.0.0.1"
