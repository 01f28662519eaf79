"""What profiling showed where a target is missed: (transport, measure) -> the reason.

Written by hand after profiling a drain child with py-spy (see docs/benchmarks.md for how);
the report prints the entry beside each missed target. Keep each entry to what the profile
showed and the measured numbers, and update it when the transport changes.
"""

from __future__ import annotations

FINDINGS: dict[tuple[str, str], str] = {}
