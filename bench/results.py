"""Results: one row per measure per transport, with its target and whether it is met."""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Target:
    """A bound on the ratio ours/reference: ``>= 0.8`` or ``<= 1.5``."""

    op: str
    value: float

    def met(self, ratio: float) -> bool:
        """Whether ``ratio`` is within the bound."""
        compare = operator.ge if self.op == ">=" else operator.le
        return bool(compare(ratio, self.value))

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}x"


#: measure key -> (what it is, unit, the target on ours/reference or None)
MEASURES: dict[str, tuple[str, str, Target | None]] = {
    "submit_one": ("submit, one by one", "tasks/s", Target(">=", 0.8)),
    "submit_batch": ("submit, batches", "tasks/s", Target(">=", 0.5)),
    "drain_1": ("drain, 1 child", "tasks/s", Target(">=", 1.0)),
    "drain_2": ("drain, 2 children", "tasks/s", None),
    "startup_1": ("start-up, 1 child", "s", None),
    "startup_2": ("start-up, 2 children", "s", None),
    "peer": ("drain, 1 child vs best peer", "tasks/s", Target(">=", 3.0)),
    "peer_dramatiq": ("drain, 1 child vs Dramatiq", "tasks/s", None),
    "peer_huey": ("drain, 1 child vs Huey", "tasks/s", None),
    "peer_arq": ("drain, 1 child vs arq", "tasks/s", None),
    "peer_pgqueuer": ("drain, 1 child vs PgQueuer", "tasks/s", None),
    "latency_p50": ("latency p50", "ms", Target("<=", 1.5)),
    "latency_p99": ("latency p99", "ms", None),
    "depth": ("drain at depth 100,000 vs 100", "tasks/s", Target(">=", 0.5)),
    "depth_raw": ("raw drain at depth 100,000 vs 100", "tasks/s", None),
    "prefetch": ("one consumer, prefetch 10 vs 1", "tasks/s", None),
    "relay": ("drain, 1 child, relay vs connection in the child", "tasks/s", None),
    "latency_relay": ("latency p50, relay vs connection in the child", "ms", None),
    "async_1": ("async I/O, child_concurrency 1", "tasks/s", None),
    "async_10": ("async I/O, child_concurrency 10", "tasks/s", None),
    "async_100": ("async I/O, child_concurrency 100", "tasks/s", Target(">=", 0.8)),
    "async_500": ("async I/O, child_concurrency 500", "tasks/s", None),
    "async_peer": ("async I/O at 100 vs arq", "tasks/s", None),
    "queues_many": ("queues() at 1,000 queues vs 100", "ms", None),
    "queues_deep": ("queues() at 1,000,000 waiting vs 100", "ms", None),
    "drain_deep": ("drain at depth 1,000,000 vs 100", "tasks/s", None),
    "tracking": (
        "tracking cost: drain, 1 child, track_status on vs off",
        "tasks/s",
        Target(">=", 0.7),
    ),
    "tracking_pgsql": (
        "tracking cost, statuses in pgsql (asynctask_state): drain, 1 child, on vs off",
        "tasks/s",
        Target(">=", 0.7),
    ),
    "wait_p50": ("wait() wake-up p50 vs raw notification", "ms", None),
    # realistic shapes (issue 20)
    "submit_batch_1kb": ("submit, batches, 1 KB payloads", "tasks/s", None),
    "drain_1kb": ("drain, 1 child, 1 KB payloads", "tasks/s", None),
    "queues_20": ("drain, 20 queues in one asynctask workers vs 1 queue", "tasks/s", None),
    "memory_server": ("server memory at depth 1,000,000 vs 100", "MB", None),
    "memory_worker": ("worker child memory at depth 1,000,000 vs 100", "MB", None),
    # wait_replicas (issue 19): redis, on a master + replica of the bench's own
    "wait_submit": ("submit, one by one, wait_replicas=1 vs none", "tasks/s", None),
    "wait_drain": ("drain, 1 child, wait_replicas=1 vs none", "tasks/s", None),
    # pgsql's table (issue 20): a committed one-row INSERT into a copy of the queue table
    # with one of its indexes (or all, or all and the trigger) against the bare copy
    "insert_bare": ("INSERT into the bare table (no index, no trigger)", "tasks/s", None),
    "insert_pkey": ("INSERT, bare + primary key (id)", "tasks/s", None),
    "insert_task_id": ("INSERT, bare + unique task_id", "tasks/s", None),
    "insert_ready": ("INSERT, bare + ready (partial)", "tasks/s", None),
    "insert_reserved": ("INSERT, bare + reserved (partial)", "tasks/s", None),
    "insert_failed": ("INSERT, bare + failed (partial)", "tasks/s", None),
    "insert_urgent": ("INSERT, bare + urgent (partial)", "tasks/s", None),
    "insert_indexes": ("INSERT, all indexes", "tasks/s", None),
    "insert_trigger": ("INSERT, all indexes + NOTIFY trigger", "tasks/s", None),
    # the same targets on a freshly vacuumed table and on one a million tasks went through
    "submit_one_fresh": ("submit, one by one, fresh table", "tasks/s", Target(">=", 0.8)),
    "submit_one_churned": ("submit, one by one, churned table", "tasks/s", Target(">=", 0.8)),
    "drain_1_fresh": ("drain, 1 child, fresh table", "tasks/s", None),
    "drain_1_churned": ("drain, 1 child, churned table", "tasks/s", None),
    "latency_p50_fresh": ("latency p50, fresh table", "ms", Target("<=", 1.5)),
    "latency_p50_churned": ("latency p50, churned table", "ms", Target("<=", 1.5)),
    # a worker child's cost per task (issue 20): redis
    "cost_p1": ("drain, 1 child, prefetch 1", "tasks/s", None),
    "cost_p4": ("drain, 1 child, prefetch 4", "tasks/s", None),
    "cost_p32": ("drain, 1 child, prefetch 32", "tasks/s", Target(">=", 0.3)),
    "cost_p32_untracked": ("drain, 1 child, prefetch 32, track_status off", "tasks/s", None),
}

#: the keys of the pgsql table's rows (``Session.pgtable``)
PG_TABLE = tuple(
    key for key in MEASURES if key.startswith("insert_") or key.endswith(("_fresh", "_churned"))
)

#: measures only some transports have: a peer where one was measured, the relay on amqp,
#: the async table where ``asynctask workers`` runs (not localmem) and the bench-only arq
#: venv exists
OPTIONAL = (
    "peer",
    "peer_dramatiq",
    "peer_huey",
    "peer_arq",
    "peer_pgqueuer",
    "relay",
    "latency_relay",
    "async_1",
    "async_10",
    "async_100",
    "async_500",
    "async_peer",
    # task status (issue 16): on the transports that keep it
    "tracking",
    "tracking_pgsql",
    "wait_p50",
    # realistic shapes: where ``asynctask workers`` runs (not localmem)
    "submit_batch_1kb",
    "drain_1kb",
    "queues_20",
    "memory_server",
    "memory_worker",
    # wait_replicas: redis only
    "wait_submit",
    "wait_drain",
    *PG_TABLE,
    "cost_p1",
    "cost_p4",
    "cost_p32",
    "cost_p32_untracked",
)

#: the measures every measured transport has
REQUIRED = tuple(key for key in MEASURES if key not in OPTIONAL)


@dataclass
class Row:
    """One measure on one transport: ours beside the reference (raw client, peer, depth 100)."""

    key: str
    ours: float
    reference: float | None
    #: what the reference is ("BRPOP loop", "Dramatiq", "depth 100")
    reference_label: str
    target: Target | None
    note: str = ""

    @property
    def label(self) -> str:
        return MEASURES[self.key][0]

    @property
    def unit(self) -> str:
        return MEASURES[self.key][1]

    @property
    def ratio(self) -> float | None:
        if self.reference is None or self.reference == 0:
            return None
        return self.ours / self.reference

    @property
    def met(self) -> bool | None:
        ratio = self.ratio
        if self.target is None or ratio is None:
            return None
        return self.target.met(ratio)

    def to_json(self) -> dict[str, Any]:
        """The row as plain JSON values."""
        return {
            "label": self.label,
            "unit": self.unit,
            "ours": self.ours,
            "reference": self.reference,
            "reference_label": self.reference_label,
            "ratio": self.ratio,
            "target": None if self.target is None else asdict(self.target),
            "met": self.met,
            "note": self.note,
        }


@dataclass
class TransportResult:
    """Every row of one transport, or why it was skipped."""

    name: str
    skipped: str | None = None
    seconds: float = 0.0
    rows: dict[str, Row] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    #: seconds each step took (submit, drain, latency, depth, depth_raw, prefetch)
    steps: dict[str, float] = field(default_factory=dict)
    #: a worker child's cost per task at each prefetch (``bench.taskcost``, JSON values)
    costs: list[dict[str, Any]] = field(default_factory=list)

    def add(
        self,
        key: str,
        ours: float,
        reference: float | None,
        reference_label: str,
        note: str = "",
        target: bool = True,
    ) -> None:
        """Record a measure; ``target=False`` shows it without its target."""
        bound = MEASURES[key][2] if target else None
        self.rows[key] = Row(key, ours, reference, reference_label, bound, note)

    def to_json(self) -> dict[str, Any]:
        """The result as plain JSON values."""
        return {
            "skipped": self.skipped,
            "seconds": self.seconds,
            "errors": self.errors,
            "steps": self.steps,
            "measures": {key: row.to_json() for key, row in self.rows.items()},
            "costs": self.costs,
        }
