"""Global limits across hosts: the limits scenario of ``make chaos`` (``chaos.limits``).

Three hosts (Linux namespaces, ``chaos.hosts``) each run ``asynctask workers`` with 2
children on a server of the test's own. A global rate of 50 starts per 5 s: in every
5 s window at most 50 start, and 130 tasks take the 10 s the rate says. ``max_running:
3`` with 1.5 s tasks: never more than 3 run at once, and when a child holding a slot is
SIGKILLed, its slot comes back (3 run at once again) at once.

Skipped where namespaces cannot be made (not root), unless
``ASYNCTASK_REQUIRE_NAMESPACES=1`` (``.ci/run``), where it fails instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .test_partition import run_chaos, skip_without_namespaces


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("name", ["redis", "pgsql"])
def test_a_global_rate_and_cap_hold_across_hosts(name: str, tmp_path: Path) -> None:
    skip_without_namespaces(name)
    # Given 3 hosts x 2 children on one queue with a global rate, then one with a cap
    # When they drain them (a child killed while it holds a slot)
    result, summary = run_chaos(tmp_path, ["--only", name, "--scenarios", "limits"], timeout=380)
    # Then the rate held in every window and bound the run; the cap held at every
    # moment, was used in full, and the killed child's slot came back
    assert result["skipped"] is None, summary
    assert result["errors"] == [], summary
    assert result["lost"] == 0 and result["ok"], summary
