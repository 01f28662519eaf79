"""The Lua scripts as built: each holds the prelude's definitions it uses, and no others."""

from __future__ import annotations

import re
import time
import uuid

import pytest
import redis

from asynctask_redis import scripts, statestore
from asynctask_redis.messages import envelope
from asynctask_redis.scripts import Script

ALL = {
    name: value
    for module in (scripts, statestore)
    for name, value in vars(module).items()
    if isinstance(value, Script)
}
DEFINED = {name for d in scripts._DEFINITIONS for name in d.defines}
#: written whole, without the prelude (``scripts.PUSH``'s note says why)
STANDALONE = {"PUSH", "PUT_ONE", "ALL_STATS"}


def _names(text: str) -> set[str]:
    """The names a Lua text reads: no comment, string literal or table constructor key."""
    code = re.sub(r"--[^\n]*", "", text)
    code = re.sub(r"'[^'\n]*'|\"[^\"\n]*\"", "''", code)
    code = re.sub(r"(?<=[{,])\s*\w+\s*=(?!=)", "", code)
    return set(re.findall(r"[A-Za-z_]\w*", code))


@pytest.mark.parametrize("name", sorted(set(ALL) - STANDALONE))
def test_a_script_defines_every_helper_it_uses(name):
    # Given a script as the transport sends it
    text = ALL[name].text
    # Then every name of the prelude it uses is a local it defines (a missing one would be
    # read as a global: Redis refuses it when the script runs, on that path only)
    defined_here = set(re.findall(r"^local\s+function\s+(\w+)", text, re.M))
    for line in re.findall(r"^local\s+([\w\s,]+?)\s*(?:=|$)", text, re.M):
        defined_here.update(n.strip() for n in line.split(","))
    assert (_names(text) & DEFINED) - defined_here == set()


def test_a_hot_script_holds_only_what_it_uses():
    # Then the move between maintenances defines no maintenance, the start no queue move
    assert "local function maintain" in scripts.TAKE.text
    assert "local function maintain" not in scripts.NEXT.text
    assert "local function recover" not in scripts.NEXT.text
    assert "local function take" in scripts.NEXT.text
    assert "local function take" not in scripts.START.text
    assert "local function to_ready" not in scripts.START.text
    assert "local function ack_all" not in scripts.LIMIT_FREE.text


def test_every_script_compiles_on_the_server(client: redis.Redis):
    # When each script is loaded, Then Redis compiles it (SCRIPT LOAD runs nothing)
    for script in ALL.values():
        assert client.script_load(script.text) == script.sha


def _stored(client: redis.Redis, prefix: str, queue: str, task_id: str) -> dict[str, object]:
    """What a submit left of one task: its record (no time), the record's and the
    pointer's expiry (-1 none, else 'set'), the pointer, the queue's name listed."""
    key, at = f"{prefix}:{queue}:task:{task_id}", f"{prefix}:@id:{task_id}"
    record = {k.decode(): v.decode() for k, v in client.hgetall(key).items()}
    submitted = float(record.pop("submitted_at"))
    return {
        "record": record,
        "submitted": submitted,
        "record_ttl": "set" if client.pttl(key) > 0 else client.pttl(key),
        "pointer": client.get(at),
        "pointer_ttl": "set" if client.pttl(at) > 0 else client.pttl(at),
        "listed": client.sismember(f"{prefix}:queues", queue),
    }


@pytest.mark.parametrize("untracked_on_server", [False, True])
def test_put_one_writes_what_put_writes(transport, client, queue, untracked_on_server):
    """PUT_ONE (the plain tracked submit, written whole) against PUT, task by task. With
    PUT_ONE broken to leave the pointer without the status TTL on a queue whose workers
    keep no status, it failed (pointer_ttl -1 against 'set')."""
    prefix = transport.prefix
    if untracked_on_server:  # the queue's workers keep no status; the client's cache is old
        client.set(f"{prefix}:{queue}:untracked", "1")
    ttl, guard = transport.status_ttl_ms, 20_000
    old, new = uuid.uuid4().hex, uuid.uuid4().hex
    before = time.time()
    transport._script(
        scripts.PUT, queue, old, guard, "0", ttl, "1", "", "", envelope(old, 0, before, "{}")
    )
    transport._script(scripts.PUT_ONE, queue, new, guard, ttl, envelope(new, 0, before, "{}"))
    after = time.time()
    by_put, by_put_one = _stored(client, prefix, queue, old), _stored(client, prefix, queue, new)
    for found in (by_put, by_put_one):
        assert before - 0.01 <= found.pop("submitted") <= after + 0.01
    assert by_put_one == by_put
    assert by_put_one["record"] == {"state": "queued", "attempts": "0"}
    assert by_put_one["record_ttl"] == ("set" if untracked_on_server else -1)
    ready = client.lrange(f"{prefix}_{queue}", 0, -1)
    assert [m.count(new.encode()) for m in ready] == [0, 1]
    # a retry after a lost reply writes nothing more
    assert (
        transport._script(scripts.PUT_ONE, queue, new, guard, ttl, envelope(new, 0, before, "{}"))
        == 0
    )
    assert client.llen(f"{prefix}_{queue}") == 2


def test_a_plain_tracked_submit_runs_put_one(transport, queue, monkeypatch):
    """The client picks PUT_ONE for one tracked task without options (it ran PUT, whose
    helpers cost the server 175k instructions a submit against PUT_ONE's 96k), and PUT
    for a delay, a priority, an expiry, a unique key or a batch."""
    sent = []
    real = transport.execute

    def spy(fn, *args):
        sent.extend(a.name for a in args[:1] if isinstance(a, Script))
        return real(fn, *args)

    monkeypatch.setattr(transport, "execute", spy)
    task_id = transport.submit_task(queue, {"n": 1})
    assert sent == ["put_one"]
    assert transport.status(task_id).state == "queued"
    transport.submit_task(queue, {"n": 2}, delay=5)
    transport.submit_task(queue, {"n": 3}, expires=60)
    transport.submit_tasks(queue, [{"n": 4}, {"n": 5}])
    assert sent == ["put_one", "put", "put", "put"]
