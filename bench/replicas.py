"""The ``replicas`` step of ``make bench``: what ``wait_replicas`` costs (issue 19).

On a master and one replica of the run's own (``chaos.redis_ha``, loopback, no
persistence; never the shared Redis, which has no replica): submits one by one and the
1-child drain of ``asynctask workers``, with ``?wait_replicas=1`` against without, in
alternating rounds, the best of each kept. A submit then costs a ``WAIT`` (the replica's
acknowledgement: one more round trip to it), and an ack is sent at once and waited for
instead of riding with the next move, so a drain pays two more round trips per task.
Run alone: ``python -m bench --only redis --steps replicas``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from asynctask.testing.contract import open_transport
from asynctask.transport import Transport
from asynctask.validation import Payload
from bench import ours
from bench.plan import Sizes, unique_name

#: what a step reports: (key, ours = with WAIT, reference = without, reference label, note)
Rows = list[tuple[str, float, float, str, str]]


def measure(sizes: Sizes, folder: Path, rounds: int, say: Callable[[str], None]) -> Rows:
    """The rows ``wait_submit`` and ``wait_drain``; see the module docstring."""
    from chaos.redis_ha import private_replicated_redis  # servers of our own, started here

    submit: dict[bool, float] = {True: 0.0, False: 0.0}
    drain: dict[bool, float] = {True: 0.0, False: 0.0}
    n = sizes.drain
    with private_replicated_redis() as pair:
        uris = {False: pair.uri(), True: pair.uri(wait_replicas="1", wait_timeout_ms="1000")}
        with open_transport(uris[False]) as plain, open_transport(uris[True]) as waited:
            transports = {False: plain, True: waited}
            for round_number in range(rounds):
                order = (True, False) if round_number % 2 == 0 else (False, True)
                for wait in order:
                    transport, queue = transports[wait], unique_name("bench_wait")
                    got = ours.rate(
                        _submitter(transport, queue),
                        sizes.submit_one // rounds,
                        50,
                        sizes.submit_budget / rounds,
                    )
                    submit[wait] = max(submit[wait], got)
                    plain.purge(queue)
            for round_number in range(sizes.drain_rounds):
                order = (True, False) if round_number % 2 == 0 else (False, True)
                for wait in order:
                    queue = unique_name("bench_wait")
                    ours.fill(plain, queue, n)
                    try:
                        drain[wait] = max(
                            drain[wait], ours.drain(uris[wait], queue, n, 1, folder).rate
                        )
                    finally:
                        plain.purge(queue)
    say(
        f"[redis] replicas: submit {submit[True]:,.0f}/s with wait_replicas=1, "
        f"{submit[False]:,.0f}/s without ({submit[True] / max(submit[False], 1e-9):.2f}x); "
        f"drain {drain[True]:,.0f}/s with, {drain[False]:,.0f}/s without "
        f"({drain[True] / max(drain[False], 1e-9):.2f}x)"
    )
    where = "own master + 1 replica on loopback"
    return [
        ("wait_submit", submit[True], submit[False], "wait_replicas=0", where),
        ("wait_drain", drain[True], drain[False], "wait_replicas=0", f"{n:,} tasks; {where}"),
    ]


def _submitter(transport: Transport, queue: str) -> Callable[[Sequence[Payload]], None]:
    def send(items: Sequence[Payload]) -> None:
        ours.submit_one(transport, queue, items)

    return send
