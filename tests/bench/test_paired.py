"""``bench.paired``: the tracking row's method (issue 16), the same on every transport."""

from __future__ import annotations

import pytest

from bench import paired


def test_pairs_alternate_who_goes_first_and_keep_each_sides_median():
    # Given a measure whose rate falls with every run (a load that rises over the step)
    calls: list[bool] = []

    def run(variant: bool) -> float:
        calls.append(variant)
        return 1000.0 - 100 * len(calls)

    # When four pairs are measured
    found = paired.alternate(run, 4)

    # Then the order is A B, B A, A B, B A, so the drift weighs on both sides alike
    assert calls == [True, False, False, True, True, False, False, True]
    assert found.a == [900.0, 600.0, 500.0, 200.0]
    assert found.b == [800.0, 700.0, 400.0, 300.0]
    # and each side's figure is its median; the ratio is theirs (here: equal sides)
    assert found.median_a == found.median_b == 550.0
    assert found.ratio == 1.0
    # and the note gives every pair's ratio range and the load average
    assert found.ratios == pytest.approx([900 / 800, 600 / 700, 500 / 400, 200 / 300])
    summary = found.summary(10_000, "on", "off")
    assert "4 ABBA pairs of 10,000 tasks" in summary
    assert "pair ratios 0.67-1.25x" in summary
    assert "load " in summary


def test_one_slow_run_moves_the_median_little():
    # Given tracking that costs 20%, and one untracked run hit by another job (a third)
    rates = iter([800.0, 1000.0, 1000.0, 800.0, 800.0, 330.0, 1000.0, 800.0])

    # When measured in four pairs
    found = paired.alternate(lambda variant: next(rates), 4)

    # Then the ratio stays 0.8 (the best of each side would have said so too, but the
    # old best of two could not tell a slow run from a real cost)
    assert found.ratio == pytest.approx(0.8)
    assert min(found.ratios) == pytest.approx(0.8)
    assert max(found.ratios) == pytest.approx(800 / 330)


def test_at_least_one_pair():
    with pytest.raises(ValueError, match="pairs must be >= 1"):
        paired.alternate(lambda variant: 1.0, 0)
