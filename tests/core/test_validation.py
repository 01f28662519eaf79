"""Queue names, payloads and URIs: bad input gets a clear error naming the value."""

from __future__ import annotations

import datetime

import pytest

from asynctask import InvalidTaskError, InvalidURIError, get_transport
from asynctask.uri import redact
from asynctask.validation import check_payload, check_queue_name, is_valid_queue_name


@pytest.mark.parametrize("name", ["foo", "a1", "foo_bar", "rex_job_0", "scheduled_0_ctl_abcdef12"])
def test_good_queue_names(name):
    assert is_valid_queue_name(name)
    assert check_queue_name(name) == name


@pytest.mark.parametrize(
    "name", ["f", "Foo", "BADNAME", "1foo", "_foo", "foo_", "foo__bar", "some-queue", None, 3]
)
def test_bad_queue_names_quote_the_name_and_the_rule(name):
    with pytest.raises(ValueError, match="not a valid queue name") as info:
        check_queue_name(name)
    assert repr(name) in str(info.value)
    assert "single underscores" in str(info.value)


def test_payload_errors_name_the_type_or_the_key():
    with pytest.raises(ValueError, match="not a list"):
        check_payload([1])
    when = datetime.datetime.now()
    with pytest.raises(ValueError, match=r"payload\['when'\].*datetime"):
        check_payload({"when": when})
    with pytest.raises(ValueError, match="key 1"):
        check_payload({"a": {1: 2}})
    assert check_payload(None) == {}


def test_unknown_scheme_lists_installed_transports_and_names_the_distribution():
    with pytest.raises(InvalidURIError) as info:
        get_transport("mysql:db")
    message = str(info.value)
    assert '"mysql:db"' in message or "'mysql:db'" in message
    assert "does not resolve to a known transport" in message
    assert "localmem" in message and "filesys" in message


def test_known_scheme_of_a_missing_distribution_says_what_to_install(monkeypatch):
    from asynctask.plugins import load_plugins

    registry = load_plugins()
    monkeypatch.delitem(registry.transports, "redis")
    with pytest.raises(InvalidURIError, match='pip install "asynctask-redis"'):
        registry.transport_class("redis://127.0.0.1")


def test_not_a_uri_at_all():
    with pytest.raises(InvalidURIError, match="not a transport URI"):
        get_transport("nothing here")


def test_unknown_option_is_refused_with_the_allowed_ones():
    with pytest.raises(InvalidURIError, match="unknown option 'colour'.*retry_timeout"):
        get_transport("localmem:?colour=red")
    with pytest.raises(InvalidURIError, match="retry_timeout='soon'"):
        get_transport("localmem:?retry_timeout=soon")


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("redis://:s3cret@host:6379/2", "redis://:***@host:6379/2"),
        ("amqp://guest:s3cret@host:5672//", "amqp://guest:***@host:5672//"),
        ("pgsql://u:s3cret@h/db?sslmode=require", "pgsql://u:***@h/db?sslmode=require"),
        ("postgresql://h/db?password=s3cret", "postgresql://h/db?password=***"),
        ("filesys:/tmp/q", "filesys:/tmp/q"),
    ],
)
def test_redact_hides_passwords(uri, shown):
    assert redact(uri) == shown


def nested(depth):
    payload: dict = {}
    inner = payload
    for _ in range(depth):
        inner["a"] = {}
        inner = inner["a"]
    return payload


def test_deep_payloads_up_to_the_limit_travel_and_deeper_ones_are_refused():
    from asynctask.validation import decode_payload, encode_payload

    assert decode_payload(encode_payload(nested(499))) == nested(499)
    for depth in (600, 5000):
        with pytest.raises(ValueError, match="nested too deeply"):
            encode_payload(nested(depth))


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"unique_key": "k"}, "unique_key names one task, but 2 payloads"),
        ({"priority": 10}, "priority must be 0-9"),
        ({"priority": True}, "priority must be an integer"),
        ({"expires": 0}, "expires must be a positive number"),
        ({"expires": float("inf")}, "expires must be a positive number"),
        ({"unique_key": ""}, "unique_key must be a non-empty string"),
    ],
)
def test_bad_submit_options_are_refused_before_anything_is_written(options, words):
    transport = get_transport("localmem:")
    queue = "bad_options_q"
    with pytest.raises(InvalidTaskError, match=words):
        transport.submit_tasks(queue, [{"n": 1}, {"n": 2}], **options)
    assert transport.queue_stats(queue).ready == 0
