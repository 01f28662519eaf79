"""From the ledger and the faults to the numbers of the table.

* **lost**: a task (not poison) with no completion in the ledger.
* **duplicates**: completions beyond the first of one task. Each must be explained by a
  fault: the earlier completion was by a child killed afterwards (its acknowledgement
  never reached the backend), or it happened around a server or connection fault or a
  stop. The bound: one per kill (a child holds its prefetch, 1) and per closed worker
  connection (what that one child held), and 4 children times the prefetch per other
  fault.
* **recovery**: for each fault, the time from its start to the first completion of a task
  that began after the fault was over (the server answers again, the new supervisor
  runs); the table shows the largest.
* **redelivery** (kills): the time from a kill to the completion, by another child, of the
  task the killed child was running; the largest.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from chaos.ledger import Entry

#: tasks a child reserves ahead (``asynctask workers`` uses prefetch 1)
PREFETCH = 1
#: seconds around a server or connection fault within which a completion may be repeated
FAULT_MARGIN = 1.0


@dataclass
class Fault:
    """One fault the suite caused: what, when (``time.time()``), and whom."""

    kind: str  # kill, restart, connections, close (one worker's connection), stop
    began: float
    ended: float
    pid: int | None = None
    detail: str = ""


@dataclass
class Tally:
    """What the ledger says about one run."""

    lost: list[int]
    duplicates: int
    unexplained: list[int]
    stored_twice: int
    poison_completed: list[int]
    recovery: float | None
    redelivery: float | None


def bound(faults: list[Fault], children: int) -> int:
    """The most duplicates the faults can explain."""
    kills = sum(1 for f in faults if f.kind == "kill" and f.pid is not None)
    closes = sum(1 for f in faults if f.kind == "close")
    others = sum(1 for f in faults if f.kind not in ("kill", "close"))
    return (kills + closes) * PREFETCH + others * children * PREFETCH


def tally(entries: list[Entry], expected: set[int], poison: set[int], faults: list[Fault]) -> Tally:
    """Count lost and repeated tasks, and time the recoveries."""
    done: dict[int, list[Entry]] = defaultdict(list)
    # a child runs one task at a time: its last start is the start of its next completion
    began: dict[tuple[str, int], Entry] = {}
    spans: list[tuple[float, float]] = []  # (start, completion) of every completion
    for entry in entries:
        if entry.event == "start":
            began[entry.process] = entry
        elif entry.event == "done":
            done[entry.n].append(entry)
            start = began.get(entry.process)
            if start is not None and start.n == entry.n:
                spans.append((start.time, entry.time))
    duplicates = 0
    unexplained: list[int] = []
    stored_twice = 0
    for n, completions in done.items():
        if len(completions) < 2:
            continue
        completions.sort(key=lambda e: e.time)
        duplicates += len(completions) - 1
        for earlier, later in itertools.pairwise(completions):
            if not _explained(earlier, faults):
                unexplained.append(n)
            if earlier.attempt == 1 and later.attempt == 1:
                stored_twice += 1
    return Tally(
        lost=sorted(n for n in expected if n not in done),
        duplicates=duplicates,
        unexplained=sorted(set(unexplained)),
        stored_twice=stored_twice,
        poison_completed=sorted(n for n in poison if n in done),
        recovery=_largest(_recovery(f, spans) for f in faults),
        redelivery=_largest(_redelivery(f, entries, done) for f in faults if f.kind == "kill"),
    )


def _explained(earlier: Entry, faults: list[Fault]) -> bool:
    for fault in faults:
        if fault.kind == "kill":
            if fault.pid == earlier.pid and fault.began >= earlier.time:
                return True
        elif fault.began - FAULT_MARGIN <= earlier.time <= fault.ended + FAULT_MARGIN:
            return True
    return False


def _recovery(fault: Fault, spans: list[tuple[float, float]]) -> float | None:
    after = [end for start, end in spans if start > fault.ended]
    return min(after) - fault.began if after else None


def _redelivery(fault: Fault, entries: list[Entry], done: dict[int, list[Entry]]) -> float | None:
    # the task the killed child had started and not completed
    started = [e for e in entries if e.pid == fault.pid and e.time <= fault.began]
    if not started or started[-1].event != "start":
        return None  # it was idle (or between tasks): nothing to give back
    later = [e.time for e in done.get(started[-1].n, []) if e.time > fault.began]
    return min(later) - fault.began if later else None


def _largest(values: Iterable[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return max(found) if found else None
