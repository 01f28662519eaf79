"""Each measure reads a ledger of its own: a second measure of the same kind in one
transport's session (the same folder) must not count the first one's lines."""

from __future__ import annotations

from pathlib import Path

from bench.measure import Session
from bench.plan import QUICK


def test_a_second_raw_wake_up_measure_reads_only_its_own_wake_ups(tmp_path: Path) -> None:
    # Given one transport's session (one folder for its ledgers), as the latency step,
    # the status step and the pgsql table rounds share
    session = Session("localmem", QUICK, tmp_path, lambda line: None)

    # When the raw client's wake-up is measured twice, 5 and then 7 tasks
    with session.raw() as raw:
        first = session._raw_latency(raw, 5, 0.001)
    with session.raw() as raw:
        second = session._raw_latency(raw, 7, 0.001)

    # Then each measure has its own tasks' wake-ups, no more
    assert len(first) == 5
    assert len(second) == 7
