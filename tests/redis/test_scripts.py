"""The Lua scripts as built: each holds the prelude's definitions it uses, and no others."""

from __future__ import annotations

import re

import pytest
import redis

from asynctask_redis import scripts, statestore
from asynctask_redis.scripts import Script

ALL = {
    name: value
    for module in (scripts, statestore)
    for name, value in vars(module).items()
    if isinstance(value, Script)
}
DEFINED = {name for d in scripts._DEFINITIONS for name in d.defines}
#: written whole, without the prelude (``scripts.PUSH``'s note says why)
STANDALONE = {"PUSH", "ALL_STATS"}


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
