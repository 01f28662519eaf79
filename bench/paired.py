"""Two variants of one measure in alternating pairs (ABBA): a ratio a noisy machine keeps.

On 2 cores shared with other work, one drain can run at half the speed of the next. The
``best of 2`` the bench kept before swung a tracking ratio from 0.53x to 0.83x between
runs of the same code. Here each pair measures both variants back to back, who goes first
alternating (A B, B A, A B, ...), so a load that rises or falls over a pair weighs on both
sides alike; each side's figure is the median of its runs (one slow run moves it little),
and the spread of the per-pair ratios says how far to trust the result.

Used by the bench's tracking row (``bench.measure``, every transport) and by
``bench.status_cost``, so both report the same statistic.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Paired:
    """The rates of variants ``a`` and ``b``, pair by pair, and the load they met."""

    a: list[float] = field(default_factory=list)
    b: list[float] = field(default_factory=list)
    #: the 1-minute load average before the first run and after the last
    load: tuple[float, float] = (0.0, 0.0)

    @property
    def ratios(self) -> list[float]:
        """a / b of each pair (measured within seconds of each other)."""
        return [x / y for x, y in zip(self.a, self.b, strict=True) if y > 0]

    @property
    def median_a(self) -> float:
        """The median rate of ``a``."""
        return statistics.median(self.a)

    @property
    def median_b(self) -> float:
        """The median rate of ``b``."""
        return statistics.median(self.b)

    @property
    def ratio(self) -> float:
        """The median of ``a`` over the median of ``b``: the figure the row shows."""
        return self.median_a / self.median_b if self.median_b > 0 else 0.0

    def summary(self, tasks: int, a: str = "a", b: str = "b") -> str:
        """One line: pairs, the per-pair ratios' median and range, each side's range."""
        r = self.ratios or [0.0]  # (a side that measured 0/s: no ratio to give)
        return (
            f"medians of {len(self.a)} ABBA pairs of {tasks:,} tasks; pair ratios "
            f"{min(r):.2f}-{max(r):.2f}x (median {statistics.median(r):.2f}x); "
            f"{a} {min(self.a):,.0f}-{max(self.a):,.0f}/s, "
            f"{b} {min(self.b):,.0f}-{max(self.b):,.0f}/s; "
            f"load {self.load[0]:.1f} -> {self.load[1]:.1f}"
        )


def alternate(run: Callable[[bool], float], pairs: int) -> Paired:
    """``run(True)`` (variant a) and ``run(False)`` (variant b), ``pairs`` times each,
    in the order A B, B A, A B, ... ; each call returns a rate."""
    if pairs < 1:
        raise ValueError(f"pairs must be >= 1, got {pairs}")
    found = Paired()
    before = os.getloadavg()[0]
    for pair in range(pairs):
        got: dict[bool, float] = {}
        for variant in (True, False) if pair % 2 == 0 else (False, True):
            got[variant] = run(variant)
        found.a.append(got[True])
        found.b.append(got[False])
    found.load = (before, os.getloadavg()[0])
    return found
