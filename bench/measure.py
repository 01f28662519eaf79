"""Measure one transport: submit, drain, latency and depth, ours beside the raw client.

Ours and raw alternate measure by measure, on the same server in the same run; every
measure uses its own queue (key, table, folder) and removes it afterwards.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from asynctask.plugins import load_plugins
from asynctask.status import StatusNotKept
from asynctask.transport import Transport
from bench import ledger, ours, paired, peer, replicas
from bench import memory as memory_of
from bench.ledger import Follower
from bench.plan import (
    ARQ_PYTHON,
    ASYNC_CONCURRENCY,
    BACKENDS,
    REDIS,
    STATE_STORE,
    Sizes,
    unavailable,
    unique_name,
)
from bench.raw import RAW, RawClient, RedisRaw, delete_amqp_queues
from bench.results import MEASURES, TransportResult
from bench.workers import SLEEP, BenchNoopWorker

Say = Callable[[str], None]
Payload = dict[str, Any]

#: submit measures alternate ours and raw this many times, keeping each side's best
ROUNDS = 3
#: the prefetch the informational ``prefetch`` measure tries
PREFETCH = 10
#: the prefetches of the ``cost`` step (issue 20): one at a time, the default, a large one
COST_PREFETCH = (1, 4, 32)
#: tasks the raw client takes per round trip in the ``cost`` step
RAW_BATCH = 100
#: the tracking row's drains last at least this many seconds (more tasks where the
#: first drain shows a faster rate), up to STATUS_GROWTH times ``Sizes.status_drain``
STATUS_SECONDS = 1.5
STATUS_GROWTH = 5
#: the pgsql table step's drain on the churned table takes ``Sizes.drain`` / this many
#: tasks: each take there walks the churn's dead index entries (459/s against 4,578/s
#: fresh, 1,000,000 tasks churned, on a private server at load 8; the raw loop 261/s)
CHURNED_DRAIN = 10


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` 0.5 is the median)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


class Session:
    """One transport's measures; ``run()`` fills a ``TransportResult``."""

    def __init__(
        self,
        name: str,
        sizes: Sizes,
        scratch: Path,
        say: Say,
        steps: set[str] | None = None,
        peers: bool = False,
        untracked: bool = False,
    ) -> None:
        self.name = name
        #: ``--untracked``: every queue is marked untracked before its submits and its
        #: workers and consumers keep no status (``track_status = False``), to compare
        #: with a commit that had no status tracking (``python -m bench.compare``)
        self.untracked = untracked
        #: the ``track_status`` of the workers: False with ``--untracked``, else theirs
        self.track: bool | None = False if untracked else None
        #: whether the peers run too (``--peers``: ``make bench PEERS=1``)
        self.peers = peers
        #: the steps to run (None: all)
        self.steps = steps
        self.sizes = sizes
        self.folder = scratch / name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.say = say
        self.backend = BACKENDS[name]
        #: the server's URI as configured (pgsql: the shared schema, if it names none)
        self.base_uri = self.backend.uri(self.folder)
        #: pgsql: a schema of this run's own (``asynctask_bench_<hex>``, dropped at the
        #: end), unless the configured URI names one. The raw client writes into a table
        #: made for the step; ours wrote into the shared ``asynctask`` schema, whatever
        #: other runs and tests had left there with autovacuum off (statuses kept a day,
        #: dead tuples): its indexes' size, not the code, moved one-by-one submits from
        #: 0.92x to 0.67x of raw (a full-page image after each checkpoint for every index
        #: page a submit touches first: 1.47 a submit and 9.4 KB of WAL on a schema
        #: holding 1,000,000 statuses and 420,000 queue rows, none and 0.8 KB on a fresh
        #: one; pg_stat_statements, private server with fsync and full_page_writes on)
        self.schema: str | None = None
        self.uri = self.base_uri
        if name == "pgsql" and "schema=" not in self.base_uri:
            self.schema = unique_name("asynctask_bench")
            self.uri = _with_option(self.base_uri, "schema", self.schema)
        self.raw_class = RAW[name]
        self.result = TransportResult(name)
        self.queues: list[str] = []  # every queue used, removed at the end where it lingers
        self.transport: Transport
        self.filler: Transport

    @property
    def children_prefetch(self) -> int:
        """The prefetch of the bench worker's children on this transport."""
        return BenchNoopWorker.prefetch or self.transport.default_prefetch

    def run(self) -> TransportResult:
        """Measure everything; a step that fails is noted and the others go on."""
        reason = unavailable(self.name)
        if reason is not None:
            self.result.skipped = reason
            self.say(f"[{self.name}] skipped: {reason}")
            return self.result
        cls = load_plugins().transport_class(self.uri)
        fill_uri = self.backend.fill_uri(self.folder)
        if self.schema is not None:  # the same tables as the measured transport's
            fill_uri = _with_option(fill_uri, "schema", self.schema)
        began = time.monotonic()
        self.transport = cls(self.uri)
        # localmem keeps its tasks in the transport object: it must fill itself
        self.filler = self.transport if fill_uri == self.uri else cls(fill_uri)
        try:
            steps = (
                self.submit,
                self.drain,
                self.latency,
                self.depth,
                self.depth_raw,
                self.prefetch,
                self.scale,
                self.asyncio,
                self.status,
                self.shapes,
                self.replicas,
                self.pgtable,
                self.cost,
            )
            for step in steps:
                if self.steps is None or step.__name__ in self.steps:
                    self._attempt(step)
        finally:
            if self.untracked:
                self._forget_untracked()
            self.filler.close()
            self.transport.close()
            if self.name == "amqp":
                # purged RabbitMQ queues stay declared; leave the broker as we found it
                delete_amqp_queues(self.queues)
            if self.schema is not None:
                _drop_schema(self.schema)
        self.result.seconds = time.monotonic() - began
        return self.result

    def _attempt(self, step: Callable[[], None]) -> None:
        """Run a step; once more if it fails (a server restarted by other work, say).

        Its tracebacks go to ``errors.log`` beside the workers' logs.
        """
        for attempt in (1, 2):
            began = time.monotonic()
            try:
                step()
                self.result.steps[step.__name__] = round(time.monotonic() - began, 1)
                return
            except Exception as exc:
                message = f"{step.__name__}: {type(exc).__name__}: {exc}"
                with open(self.folder / "errors.log", "a", encoding="utf-8") as log:
                    log.write(f"attempt {attempt}: " + traceback.format_exc() + "\n")
                if attempt == 2:
                    self.result.errors.append(message)
                    self.say(f"[{self.name}] FAILED {message}")
                else:
                    self.say(f"[{self.name}] {message}; trying {step.__name__} again")
                    time.sleep(2)

    # -- helpers ----------------------------------------------------------------------

    @contextlib.contextmanager
    def raw(self) -> Iterator[RawClient]:
        """A raw client on a new target (key, table, queue, folder), removed afterwards."""
        target = unique_name("bench_raw")
        if self.name == "filesys":
            target = str(self.folder / target)
        client = self.raw_class(target)
        client.create()
        try:
            yield client
        finally:
            client.destroy()

    def add(
        self,
        key: str,
        ours: float,
        reference: float | None,
        label: str,
        note: str = "",
        target: bool = True,
        own_reference: bool = False,
    ) -> None:
        """Record a row; localmem's rows carry no target (it has no raw client to match)
        unless the reference is ours too (``own_reference``: tracking off)."""
        target = target and (self.name != "localmem" or own_reference)
        self.result.add(key, ours, reference, label, note, target)

    def queue(self, what: str) -> str:
        name = unique_name(f"bench_{what}")
        self.queues.append(name)
        if self.untracked:
            self._set_tracking(name, False)
        return name

    def _set_tracking(self, queue: str, tracked: bool) -> None:
        """Record ``queue``'s tracking in the store, as its workers do at their start
        (before the first submit, so that the submits see it too); nothing where the
        transport keeps no status (AMQP without ``asynctask_state``)."""
        try:
            store = self.transport.state()
        except StatusNotKept:
            return
        store.set_tracking(queue, tracked)

    def _forget_untracked(self) -> None:
        """Drop the untracked marks of ``--untracked`` (a key, a row per queue)."""
        for queue in self.queues:
            with contextlib.suppress(Exception):  # best effort, like the queues' removal
                self._set_tracking(queue, True)

    def label(self, measure: str) -> str:
        return self.raw_class.labels[measure]

    # -- the measures -----------------------------------------------------------------

    def submit(self) -> None:
        """1. Tasks/s from one process: one by one, then in batches."""
        sizes, transport = self.sizes, self.transport
        n, batch, budget = sizes.submit_one, sizes.batch, sizes.submit_budget / ROUNDS
        queue = self.queue("submit")
        with self.raw() as raw:
            ours_one, raw_one = ours.interleaved(
                lambda items: ours.submit_one(transport, queue, items),
                raw.submit_one,
                n,
                50,
                sizes.submit_budget * 2,
            )
        transport.purge(queue)
        self.add("submit_one", ours_one, raw_one, self.label("submit_one"))
        ours_batch, raw_batch = self._best_of(
            lambda items: ours.submit_batch(transport, queue, items, batch),
            lambda raw: lambda items: raw.submit_bulk(items, batch),
            sizes.submit_batch,
            batch,
            budget,
        )
        transport.purge(queue)
        self.add("submit_batch", ours_batch, raw_batch, f"{self.label('submit_batch')} ({batch:,})")
        self.say(
            f"[{self.name}] submit: one {ours_one:,.0f}/s (raw {raw_one:,.0f}/s), "
            f"batch {ours_batch:,.0f}/s (raw {raw_batch:,.0f}/s)"
        )

    def _best_of(
        self,
        mine: Callable[[Sequence[Payload]], object],
        theirs: Callable[[RawClient], Callable[[Sequence[Payload]], object]],
        count: int,
        chunk: int,
        budget: float,
    ) -> tuple[float, float]:
        """The best rate of each side over ``ROUNDS`` alternating rounds.

        The machine may be busy with other work; alternating and keeping the best of each
        side compares the two at their least disturbed, as ``timeit`` does.
        """
        best_mine = best_theirs = 0.0
        per_round = max(1, count // ROUNDS)
        with self.raw() as raw:
            send = theirs(raw)
            for round_number in range(ROUNDS):
                # who goes first alternates too: a side going second inherits the disk
                # writeback or server work the first one left behind
                if round_number % 2:
                    best_theirs = max(best_theirs, ours.rate(send, per_round, chunk, budget))
                best_mine = max(best_mine, ours.rate(mine, per_round, chunk, budget))
                if not round_number % 2:
                    best_theirs = max(best_theirs, ours.rate(send, per_round, chunk, budget))
        return best_mine, best_theirs

    def drain(self) -> None:
        """2. ``asynctask workers`` with 1 then 2 children on a full queue; raw loop."""
        n = self.sizes.drain
        drains: dict[int, ours.Drain] = {}
        raw_rate = 0.0
        # Alternating rounds, the best of each kept: a drain is one run, and other work
        # on 2 cores can halve a single one.
        # amqp: also 1 child with its connection in the child (relay=false), what the
        # relay costs; in the same rounds, so both meet the same machine load
        no_relay = 0.0
        peers = peer.PEERS.get(self.name, ()) if self.peers else ()
        best_peer: dict[str, dict[str, object]] = {}
        for round_number in range(self.sizes.drain_rounds):
            if round_number % 2:
                raw_rate = max(raw_rate, self._raw_drain_once())
                self._peer_drains(peers, best_peer)
            for children in (1, 2):
                result = self._drain_once(children)
                if children not in drains or result.rate > drains[children].rate:
                    drains[children] = result
            if self.name == "amqp":
                no_relay = max(no_relay, self._drain_once(1, relay=False).rate)
            if not round_number % 2:
                raw_rate = max(raw_rate, self._raw_drain_once())
                self._peer_drains(peers, best_peer)
        if no_relay:
            self.add("relay", drains[1].rate, no_relay, "(relay=false)", target=False)
            self.say(f"[{self.name}] drain, 1 child, connection in the child: {no_relay:,.0f}/s")
        for children, result in drains.items():
            note = f"{result.done:,} tasks in {result.total:.1f} s from launch to the last start"
            if result.done < n:
                note = f"stopped after {result.done:,} of {n:,} tasks (out of time)"
            self.add(
                f"drain_{children}",
                result.rate,
                raw_rate,
                self.label("drain"),
                note,
                target=self.name in ("pgsql", "redis", "amqp"),
            )
            self.add(f"startup_{children}", result.startup, None, "")
        self._add_peers(peers, best_peer, drains[1].rate)
        self.say(
            f"[{self.name}] drain: 1 child {drains[1].rate:,.0f}/s "
            f"(start-up {drains[1].startup:.2f} s), 2 children {drains[2].rate:,.0f}/s "
            f"(start-up {drains[2].startup:.2f} s), raw {raw_rate:,.0f}/s"
        )

    def _peer_drains(self, peers: Sequence[peer.Peer], best: dict[str, dict[str, object]]) -> None:
        """One drain by each peer (in the drain's rounds), the best of each kept."""
        url = "file" if self.name == "filesys" else self.uri
        for one in peers:
            got = peer.drain(one, url, self.sizes.peer_drain, self.folder / "peers")
            if one.key not in best or float(got["rate"]) > float(best[one.key]["rate"]):  # type: ignore[arg-type]
                best[one.key] = got

    def _add_peers(
        self, peers: Sequence[peer.Peer], best: dict[str, dict[str, object]], ours_rate: float
    ) -> None:
        """A row per peer, and the ``peer`` row (target >= 3x) against the fastest."""
        if not peers:
            return
        rates = {one.key: float(best[one.key]["rate"]) for one in peers}  # type: ignore[arg-type]
        for one in peers:
            got = best[one.key]
            note = f"{got['done']:,} tasks; `{got['command']}`; {one.settings}"
            self.add(one.key, ours_rate, rates[one.key], one.name, note, target=False)
        fastest = max(peers, key=lambda one: rates[one.key])
        self.add("peer", ours_rate, rates[fastest.key], fastest.name)
        line = ", ".join(f"{one.name} {rates[one.key]:,.0f}/s" for one in peers)
        self.say(f"[{self.name}] peers (1 worker process): {line}")

    def _raw_drain_once(self) -> float:
        n = self.sizes.drain
        with self.raw() as raw:
            raw.fill(ours.payloads(n), self.sizes.batch)
            start = time.perf_counter()
            raw.drain(n)
            return n / (time.perf_counter() - start)

    def _drain_once(self, children: int, relay: bool = True) -> ours.Drain:
        n = self.sizes.drain
        queue = self.queue("drain")
        ours.fill(self.filler, queue, n)
        uri = self.uri if relay else _with_option(self.uri, "relay", "false")
        try:
            if self.backend.multiprocess:
                return ours.drain(uri, queue, n, children, self.folder, self.track)
            return ours.drain_in_process(self.transport, queue, children, self.folder, self.track)
        finally:
            self.transport.purge(queue)

    def latency(self) -> None:
        """3. Submit to ``process()`` start on an idle worker; raw: the client's wake-up."""
        n, gap = self.sizes.latency, self.sizes.latency_gap
        queue = self.queue("latency")
        if self.backend.multiprocess:
            mine = ours.latency(self.uri, self.transport, queue, n, gap, self.folder, self.track)
        else:
            mine = ours.latency_in_process(self.transport, queue, n, gap, self.folder, self.track)
        self.transport.purge(queue)
        # amqp: also with the child's connection in the child (relay=false), what the
        # relay's hand-over costs; right after, so both meet the same machine load
        no_relay: list[float] = []
        if self.name == "amqp":
            queue = self.queue("latency")
            no_relay = ours.latency(
                _with_option(self.uri, "relay", "false"),
                self.transport,
                queue,
                n,
                gap,
                self.folder,
                self.track,
            )
            self.transport.purge(queue)
        with self.raw() as raw:
            theirs = self._raw_latency(raw, n, gap)
        label = self.label("latency")
        for key, fraction in (("latency_p50", 0.5), ("latency_p99", 0.99)):
            self.add(key, percentile(mine, fraction), percentile(theirs, fraction), label)
        self.say(
            f"[{self.name}] latency: p50 {percentile(mine, 0.5):.2f} ms "
            f"(raw {percentile(theirs, 0.5):.2f}), p99 {percentile(mine, 0.99):.2f} ms "
            f"(raw {percentile(theirs, 0.99):.2f})"
        )
        if no_relay:
            p50 = percentile(no_relay, 0.5)
            self.add("latency_relay", percentile(mine, 0.5), p50, "(relay=false)", target=False)
            self.say(f"[{self.name}] latency p50, connection in the child: {p50:.2f} ms")

    def _raw_latency(self, raw: RawClient, n: int, gap: float) -> list[float]:
        path = ledger.fresh(str(self.folder / f"latency-{raw.name}-raw.ledger"))
        follower = Follower(path)
        ready = threading.Event()
        if raw.in_process:
            thread = threading.Thread(target=raw.listen, args=(path, n + 1, ready.set))
            thread.start()
            ready.wait(10)
            alive: Callable[[], bool] = thread.is_alive
            process = None
        else:
            command = [sys.executable, "-m", "bench.wake", raw.name, raw.target, path, str(n + 1)]
            process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ours.ROOT)
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the raw listener of {raw.name} did not start")
            alive = lambda: process.poll() is None  # noqa: E731
        try:
            raw.send({"n": -1, "sent": time.time()})
            follower.wait(1, 30, alive)
            ours.send_spaced(raw.send, n, gap)
            follower.wait(n + 1, 60, alive)
        finally:
            if process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(10)
                if process.poll() is None:
                    process.kill()
                    process.wait()
            else:
                thread.join(10)
        return ours.latencies(path, 1)

    def depth(self) -> None:
        """4. One consumer's reserve+ack rate with 100 waiting against 100,000 waiting.

        Each fill (ours and the raw client's, at both depths) is followed by ``sync()``,
        so that every take starts from files written out: on this machine's ext4 (mounted
        with ``discard``) a file deleted after the kernel wrote it out costs 545 us
        against 74 us for one still in memory (wt/fsreg, ``strace -T``), and a fill of
        100,000 outlasting the 30 s write-back delay was taken from disk while a fill of
        100 was not: the ratio measured the write-back, not the depth."""
        small, rounds = self.sizes.depth_small, self.sizes.depth_rounds
        big, take = self.sizes.depth_big, self.sizes.depth_take
        queue = self.queue("depth")

        def fill_small() -> int:
            ours.fill(self.filler, queue, small)
            os.sync()  # every fill taken from the same state: on disk (see depth_raw too)
            return small

        rate_small = ours.consume(
            self.transport, queue, [fill_small] * rounds, self.children_prefetch, self.track
        )
        self.transport.purge(queue)

        deep = self.queue("deep")

        def fill_big() -> int:
            ours.fill(self.filler, deep, big, batch=5000)
            os.sync()
            return take

        try:
            rate_big = ours.consume(
                self.transport, deep, [fill_big], self.children_prefetch, self.track
            )
        finally:
            self.transport.purge(deep)
        self.add(
            "depth",
            rate_big,
            rate_small,
            f"depth {small:,}",
        )
        self.say(
            f"[{self.name}] depth: {rate_small:,.0f}/s with {small:,} waiting, "
            f"{rate_big:,.0f}/s with {big:,} waiting"
        )

    def prefetch(self) -> None:
        """5. What a prefetch of 10 would give one consumer (workers use 1 today)."""
        count = self.sizes.depth_small * self.sizes.depth_rounds
        rates = {}
        for prefetch in (1, PREFETCH):
            queue = self.queue("prefetch")

            def fill_all(queue: str = queue) -> int:
                ours.fill(self.filler, queue, count)
                return count

            try:
                rates[prefetch] = ours.consume(
                    self.transport, queue, [fill_all], prefetch, self.track
                )
            finally:
                self.transport.purge(queue)
        self.add(
            "prefetch",
            rates[PREFETCH],
            rates[1],
            "prefetch 1",
        )
        self.say(
            f"[{self.name}] prefetch: {rates[1]:,.0f}/s with 1, {rates[PREFETCH]:,.0f}/s "
            f"with {PREFETCH}"
        )

    def scale(self) -> None:
        """6. What grows with the store: the ``queues`` call at 100 and at 1,000 queues,
        then at 100 and at 1,000,000 tasks waiting in one queue, and one consumer's drain
        at those two depths (no targets: the ratios show what a bigger store costs)."""
        sizes, transport = self.sizes, self.transport

        def queues_time() -> float:  # the best of 3 calls, in seconds
            best = math.inf
            for _ in range(3):
                start = time.perf_counter()
                transport.queues()
                best = min(best, time.perf_counter() - start)
            return best

        names = [self.queue("many") for _ in range(sizes.queues_many)]
        for name in names[: sizes.queues_few]:
            self.filler.submit_task(name, {"n": 0})
        few = queues_time()
        for name in names[sizes.queues_few :]:
            self.filler.submit_task(name, {"n": 0})
        many = queues_time()
        for name in names:
            transport.purge(name)
        label = f"{sizes.queues_few:,} queues"
        self.add("queues_many", many * 1000, few * 1000, label, target=False)

        deep = self.queue("deep")
        small, rounds, take = sizes.depth_small, sizes.depth_rounds, sizes.depth_take
        count = min(sizes.deep, self.backend.deep_cap or sizes.deep)
        ours.fill(self.filler, deep, small)
        shallow = queues_time()

        def fill_small() -> int:
            ours.fill(self.filler, deep, small)
            return small

        try:
            first: list[Callable[[], int]] = [lambda: small]  # the 100 already there
            plan = first + [fill_small] * (rounds - 1)
            rate_small = ours.consume(transport, deep, plan, self.children_prefetch)
            ours.fill(self.filler, deep, count, batch=5000)
            deep_time = queues_time()
            rate_deep = ours.consume(transport, deep, [lambda: take], self.children_prefetch)
        finally:
            transport.purge(deep)
        note = "" if count == sizes.deep else f"{count:,} waiting here, not {sizes.deep:,}"
        self.add("queues_deep", deep_time * 1000, shallow * 1000, f"{small:,} waiting", note, False)
        self.add("drain_deep", rate_deep, rate_small, f"depth {small:,}", note, False)
        self.say(
            f"[{self.name}] queues(): {few * 1000:.1f} ms at {sizes.queues_few:,} queues, "
            f"{many * 1000:.1f} ms at {sizes.queues_many:,}; {shallow * 1000:.1f} ms at "
            f"{small:,} waiting, {deep_time * 1000:.1f} ms at {count:,}; drain "
            f"{rate_small:,.0f}/s at {small:,}, {rate_deep:,.0f}/s at {count:,}"
        )

    def asyncio(self) -> None:
        """7. I/O-bound async tasks with one child at each ``child_concurrency``; arq beside."""
        if not self.backend.multiprocess:
            return  # the async table runs ``asynctask workers``, which refuses localmem
        rates: dict[int, float] = {}
        for concurrency in ASYNC_CONCURRENCY:
            count = concurrency * self.sizes.async_rounds
            queue = self.queue(f"io{concurrency}")
            ours.fill(self.filler, queue, count)
            try:
                result = ours.drain_io(self.uri, queue, count, concurrency, self.folder)
            finally:
                self.transport.purge(queue)
            ideal = concurrency / SLEEP
            rates[concurrency] = result.rate
            self.add(
                f"async_{concurrency}",
                result.rate,
                ideal,
                f"ideal {concurrency}/{SLEEP:g} s",
                f"{count:,} tasks of `await asyncio.sleep({SLEEP:g})`",
                target=self.name in ("pgsql", "redis"),
            )
        line = ", ".join(f"{c}: {r:,.0f}/s" for c, r in rates.items())
        if self.name == "redis" and self.peers and ARQ_PYTHON.exists():
            count = 100 * self.sizes.async_rounds
            arq = ours.arq_io(ARQ_PYTHON, REDIS, 100, count, SLEEP)
            self.add("async_peer", rates[100], arq, "arq, max_jobs 100, poll_delay 0.01 s")
            line += f"; arq at 100: {arq:,.0f}/s"
        self.say(f"[{self.name}] async I/O: {line}")

    def depth_raw(self) -> None:
        """4b. The raw client's drain loop at the same two depths: what the server adds."""
        small, rounds = self.sizes.depth_small, self.sizes.depth_rounds
        big, take = self.sizes.depth_big, self.sizes.depth_take
        elapsed = 0.0
        with self.raw() as raw:
            for _ in range(rounds):
                raw.fill(ours.payloads(small), self.sizes.batch)
                os.sync()
                start = time.perf_counter()
                raw.drain(small)
                elapsed += time.perf_counter() - start
        rate_small = small * rounds / elapsed
        with self.raw() as raw:
            raw.fill(ours.payloads(big), 5000)
            os.sync()
            start = time.perf_counter()
            raw.drain(take)
            rate_big = take / (time.perf_counter() - start)
        self.add(
            "depth_raw",
            rate_big,
            rate_small,
            f"raw at depth {small:,}",
        )
        self.say(
            f"[{self.name}] raw depth: {rate_small:,.0f}/s with {small:,} waiting, "
            f"{rate_big:,.0f}/s with {big:,} waiting"
        )

    def status(self) -> None:
        """9. Task status: the drain with ``track_status`` on vs off, in alternating
        pairs (ABBA, ``bench.paired``: the median of each side, the pairs' spread in the
        note; the issue asks >= 0.7x); ``wait`` woken by an ack vs the raw client's
        wake-up on a send (its notification: BRPOP, LISTEN, inotify...). A transport
        that keeps no status (AMQP) keeps it in the bench's Redis (``asynctask_state``),
        as its users would: that is what its tracking costs."""
        if self.untracked:  # every queue marked untracked: there is no "on" to measure
            self.say(f"[{self.name}] status: not measured (--untracked)")
            return
        state_uri = None
        try:
            self.transport.state()
        except StatusNotKept as exc:
            if unavailable(STATE_STORE) is not None:
                self.say(f"[{self.name}] status: not measured ({exc})")
                return
            state_uri = BACKENDS[STATE_STORE].uri(self.folder)
            self.transport.state_uri = state_uri

        def drain(tracked: bool, n: int) -> float:
            return self._tracked_drain(tracked, n, state_uri)

        # A first, smaller drain, not counted, warms up and sizes the others: a drain
        # shorter than STATUS_SECONDS (localmem does 10,000 in a fifth of a second) is
        # swung by one time slice of another process
        n = self.sizes.status_drain
        warm = drain(True, max(2, n // 4))
        n = min(n * STATUS_GROWTH, max(n, int(warm * STATUS_SECONDS)))
        pairs = paired.alternate(lambda tracked: drain(tracked, n), self.sizes.status_pairs)
        where = "" if state_uri is None else f" (state in {STATE_STORE})"
        self.add(
            "tracking",
            pairs.median_a,
            pairs.median_b,
            "track_status = False" + where,
            note=pairs.summary(n, "on", "off"),
            own_reference=True,
        )
        if state_uri is not None and STATE_STORE != "pgsql" and unavailable("pgsql") is None:
            # the same with the statuses in pgsql (its status feed: one statement a
            # batch of writes, asynctask_pgsql.statefeed)
            pg_state = BACKENDS["pgsql"].uri(self.folder)
            self.transport.state_uri = pg_state
            try:
                pg = paired.alternate(
                    lambda tracked: self._tracked_drain(tracked, n, pg_state),
                    self.sizes.status_pairs,
                )
            finally:
                self.transport.state_uri = state_uri
            self.add(
                "tracking_pgsql",
                pg.median_a,
                pg.median_b,
                "track_status = False (state in pgsql)",
                note=pg.summary(n, "on", "off"),
                own_reference=True,
            )
            note = pg.summary(n, "on", "off")
            self.say(f"[{self.name}] status, state in pgsql: {pg.ratio:.2f}x ({note})")
        self._status_wait(pairs, n, state_uri)

    def _tracked_drain(self, tracked: bool, n: int, state_uri: str | None) -> float:
        """One drain of the status step, with tracking on or off."""
        queue = self.queue("track")
        if not tracked:  # as its workers mark it: its submits write no status
            self._set_tracking(queue, False)
        ours.fill(self.filler, queue, n)
        try:
            if self.backend.multiprocess:
                got = ours.drain(self.uri, queue, n, 1, self.folder, tracked, state_uri)
            else:
                got = ours.drain_in_process(self.transport, queue, 1, self.folder, tracked)
        finally:
            self.transport.purge(queue)
            if not tracked:
                self._set_tracking(queue, True)  # leave the store as we found it
        return got.rate

    def _status_wait(self, pairs: paired.Paired, n: int, state_uri: str | None) -> None:
        """The status step's ``wait`` row (see ``status``)."""
        where = "" if state_uri is None else f" (state in {STATE_STORE})"
        count = max(10, self.sizes.latency // 10)
        queue = self.queue("wait")
        waiter = self.transport if not self.backend.multiprocess else type(self.transport)(self.uri)
        waiter.state_uri = state_uri or waiter.state_uri
        try:
            mine = ours.wait_wakeups(self.transport, waiter, queue, count)
        finally:
            if waiter is not self.transport:
                waiter.close()
        with self.raw() as raw:
            theirs = self._raw_latency(raw, count, self.sizes.latency_gap)
        self.add(
            "wait_p50",
            percentile(mine, 0.5),
            percentile(theirs, 0.5),
            self.label("latency") + where,
        )
        self.say(
            f"[{self.name}] status: drain {pairs.median_a:,.0f}/s tracked, "
            f"{pairs.median_b:,.0f}/s not ({pairs.ratio:.2f}x; {pairs.summary(n, 'on', 'off')}); "
            "wait p50 "
            f"{percentile(mine, 0.5):.2f} ms (raw wake-up {percentile(theirs, 0.5):.2f} ms)"
        )

    def shapes(self) -> None:
        """10. Realistic shapes (issue 20): 1 KB payloads (batch submit and drain, ours
        beside raw), 20 queues served at once by one ``asynctask workers``, and the memory
        of the server and of a worker child at depth 1,000,000 against 100."""
        if not self.backend.multiprocess:
            return  # ``asynctask workers`` refuses localmem
        sizes, n, pad = self.sizes, self.sizes.drain, 1000
        queue = self.queue("kb")
        with self.raw() as raw:
            mine = ours.rate(
                lambda items: ours.submit_batch(self.transport, queue, items, sizes.batch),
                sizes.submit_batch // 3,
                sizes.batch,
                sizes.submit_budget / 3,
                pad,
            )
            theirs = ours.rate(
                lambda items: raw.submit_bulk(items, sizes.batch),
                sizes.submit_batch // 3, sizes.batch, sizes.submit_budget / 3, pad,
            )  # fmt: skip
        self.transport.purge(queue)
        label = self.label("submit_batch")
        self.add("submit_batch_1kb", mine, theirs, f"{label} ({sizes.batch:,})", target=False)
        kb_ours = kb_raw = 0.0
        for _ in range(sizes.drain_rounds):
            queue = self.queue("kb")
            ours.fill(self.filler, queue, n, pad=pad)
            try:
                kb_ours = max(kb_ours, ours.drain(self.uri, queue, n, 1, self.folder).rate)
            finally:
                self.transport.purge(queue)
            with self.raw() as raw:
                raw.fill(ours.payloads(n, pad=pad), sizes.batch)
                start = time.perf_counter()
                raw.drain(n)
                kb_raw = max(kb_raw, n / (time.perf_counter() - start))
        self.add("drain_1kb", kb_ours, kb_raw, self.label("drain"), target=False)

        names = [self.queue(f"q{i}") for i in range(20)]
        for name in names:
            ours.fill(self.filler, name, max(2, n // 20))
        try:
            many = ours.drain_queues(self.uri, names, n, self.folder)
        finally:
            for name in names:
                self.transport.purge(name)
        one = self.result.rows.get("drain_1")
        single = one.ours if one is not None else self._drain_once(1).rate
        note = f"{many.done:,} tasks, start-up {many.startup:.1f} s (20 children)"
        self.add("queues_20", many.rate, single, "1 queue, 1 child", note, target=False)

        small = sizes.depth_small
        count = min(sizes.deep, self.backend.deep_cap or sizes.deep)
        memory: dict[int, tuple[float | None, float]] = {}
        for depth in (small, count):
            queue = self.queue("mem")
            ours.fill(self.filler, queue, depth, batch=5000)
            try:
                held = memory_of.server(self.name, self.folder)
                child = ours.worker_memory(self.uri, queue, small // 2, self.folder)
            finally:
                self.transport.purge(queue)
            memory[depth] = (held, child)
        what = memory_of.WHAT[self.name]
        mb = 1024 * 1024
        deep_held, small_held = memory[count][0], memory[small][0]
        if deep_held is not None and small_held is not None:
            self.add(
                "memory_server", deep_held / mb, small_held / mb, f"depth {small:,}",
                f"{what}, {count:,} waiting", target=False,
            )  # fmt: skip
        self.add(
            "memory_worker", memory[count][1] / mb, memory[small][1] / mb, f"depth {small:,}",
            f"peak RSS of the child after {small // 2} tasks, {count:,} waiting", target=False,
        )  # fmt: skip
        self.say(
            f"[{self.name}] shapes: 1 KB batch submit {mine:,.0f}/s (raw {theirs:,.0f}/s), "
            f"drain {kb_ours:,.0f}/s (raw {kb_raw:,.0f}/s); 20 queues {many.rate:,.0f}/s "
            f"(1 queue {single:,.0f}/s); memory at {count:,} vs {small:,}: {what} "
            f"{(deep_held or 0) / mb:,.1f} MB vs {(small_held or 0) / mb:,.1f} MB, child "
            f"{memory[count][1] / mb:,.1f} MB vs {memory[small][1] / mb:,.1f} MB"
        )

    def replicas(self) -> None:
        """13. ``wait_replicas`` (redis only): submit and drain with ``WAIT`` for one
        replica against without, on a master and replica of the run's own
        (``bench.replicas``)."""
        if self.name != "redis":
            return
        for key, mine, theirs, label, note in replicas.measure(
            self.sizes, self.folder, ROUNDS, self.say
        ):
            self.add(key, mine, theirs, label, note, target=False)

    def pgtable(self) -> None:
        """11. pgsql only (issue 20): what each index and the trigger cost a committed
        INSERT; then submit, drain and wake-up against the raw client on a freshly
        vacuumed table and on one ``Sizes.churn`` tasks have passed through with no VACUUM
        since (a schema of its own, ``asynctask_bench_churn_<hex>``; the transport's own
        VACUUM is off there, ``vacuum_every=0``, so nothing cleans it)."""
        if self.name != "pgsql":
            return
        import psycopg

        from bench import pgtable
        from bench.raw import PgRaw, pg_conninfo

        sizes = self.sizes
        costs, inside = pgtable.index_costs(pg_conninfo(), sizes.submit_one // ROUNDS, ROUNDS, 2.0)
        for label, rate in costs.items():
            note = f"{inside[label]:.1f} µs a row in one INSERT ... SELECT"
            if f"insert_{label}" in MEASURES:  # an index added since is in the line below
                self.add(f"insert_{label}", rate, costs["bare"], "bare table", note, False)
        self.say(
            f"[{self.name}] committed INSERT: "
            + ", ".join(
                f"{label} {rate:,.0f}/s ({inside[label]:.1f} µs a row in a set)"
                for label, rate in costs.items()
            )
        )
        # a name of its own: two benches at once on one server must not drop each other's
        schema = unique_name("asynctask_bench_churn")
        uri = _with_option(_with_option(self.base_uri, "schema", schema), "vacuum_every", "0")
        transport = type(self.transport)(uri)
        raw = PgRaw(unique_name("bench_raw_churn"))
        raw.create()
        conn = psycopg.connect(pg_conninfo(), autocommit=True)
        tables = [f"{schema}.asynctask_queue", f"{schema}.asynctask_status", raw.target]
        queue = self.queue("table")  # both rounds' queue, and the one the churn passes through
        try:
            transport.purge(self.queue("churn"))  # the schema exists before the VACUUM
            transport.submit_task("bench_churn_make", {})
            transport.purge("bench_churn_make")
            for table_state in ("fresh", "churned"):
                if table_state == "fresh":
                    pgtable.vacuum(conn, tables)
                else:
                    began = time.monotonic()
                    pgtable.churn(conn, schema, raw.target, sizes.churn, queue)
                    dead = pgtable.dead_tuples(conn, tables)
                    self.say(
                        f"[{self.name}] {sizes.churn:,} tasks passed in "
                        f"{time.monotonic() - began:.0f} s; dead tuples: {dead}"
                    )
                self._table_round(transport, uri, raw, table_state, queue)
        finally:
            transport.close()
            raw.destroy()
            # the bench's own schema: the next run starts from nothing again
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            conn.close()

    def _table_round(
        self, transport: Transport, uri: str, raw: RawClient, state: str, queue: str
    ) -> None:
        """Submit one by one, a 1-child drain and the wake-up p50, ours against raw, on
        ``queue`` (the one the churn passed its tasks through)."""
        sizes = self.sizes
        n, budget = sizes.submit_one // ROUNDS, sizes.submit_budget / ROUNDS
        mine, theirs = ours.interleaved(
            lambda items: ours.submit_one(transport, queue, items),
            raw.submit_one,
            n * ROUNDS,
            50,
            budget * ROUNDS * 2,
        )
        transport.purge(queue)
        raw.conn.execute(f"DELETE FROM {raw.target}")  # type: ignore[attr-defined]
        label = f"({state} table)"
        self.add(f"submit_one_{state}", mine, theirs, f"{self.label('submit_one')} {label}")
        # Every take on the churned table walks the dead index entries the churn left at
        # the head of the queue (tens of ms a statement on either side): a tenth of the
        # drain gives the rate without running the step for a quarter of an hour
        count = sizes.drain if state == "fresh" else max(50, sizes.drain // CHURNED_DRAIN)
        ours.fill(transport, queue, count)
        try:
            drained = ours.drain(uri, queue, count, 1, self.folder)
        finally:
            transport.purge(queue)
        raw.fill(ours.payloads(count), sizes.batch)
        started = time.perf_counter()
        raw.drain(count)
        raw_rate = count / (time.perf_counter() - started)
        self.add(
            f"drain_1_{state}", drained.rate, raw_rate, f"{self.label('drain')} {label}",
            f"{drained.done:,} of {count:,} tasks in the drain's time limit"
            if drained.done < count else f"{count:,} tasks",
        )  # fmt: skip
        count, gap = sizes.latency, sizes.latency_gap
        wakeups = ours.latency(uri, transport, queue, count, gap, self.folder)
        transport.purge(queue)
        raw_wakeups = self._raw_latency(raw, count, gap)
        p50, raw_p50 = percentile(wakeups, 0.5), percentile(raw_wakeups, 0.5)
        self.add(f"latency_p50_{state}", p50, raw_p50, f"{self.label('latency')} {label}")
        self.say(
            f"[{self.name}] {state} table: submit one {mine:,.0f}/s (raw {theirs:,.0f}/s), "
            f"drain {drained.rate:,.0f}/s (raw {raw_rate:,.0f}/s), "
            f"wake-up p50 {p50:.2f} ms (raw {raw_p50:.2f})"
        )

    def cost(self) -> None:
        """12. A worker child's cost per task (issue 20; redis): one child at prefetch 1, 4
        and 32 against the raw client taking 100 tasks a round trip (target at 32:
        >= 0.3x), in alternating rounds; then, in a process of its own, where each
        prefetch's time per task goes (``bench.taskcost``: round trips against our code,
        by part)."""
        if self.name != "redis":
            return
        n, untracked, raw_rate = self.sizes.drain, 0.0, 0.0
        rates: dict[int, float] = {}
        for round_number in range(self.sizes.drain_rounds):
            if round_number % 2:
                raw_rate = max(raw_rate, self._raw_batch_drain())
            for prefetch in COST_PREFETCH:
                got = self._drain_prefetch(prefetch)
                rates[prefetch] = max(rates.get(prefetch, 0.0), got)
            untracked = max(untracked, self._drain_prefetch(COST_PREFETCH[-1], False))
            if not round_number % 2:
                raw_rate = max(raw_rate, self._raw_batch_drain())
        label = f"LPOP {RAW_BATCH} at a time"
        for prefetch in COST_PREFETCH:
            key = f"cost_p{prefetch}"
            self.add(key, rates[prefetch], raw_rate, label, target=key == "cost_p32")
        self.add("cost_p32_untracked", untracked, raw_rate, label, target=False)
        command = [sys.executable, "-m", "bench.taskcost", "--json", "--untracked"]
        command += ["--tasks", str(n), "--uri", self.uri]
        command += ["--prefetch", ",".join(str(p) for p in COST_PREFETCH)]
        done = subprocess.run(
            command, capture_output=True, text=True, cwd=ours.ROOT, check=True, timeout=1800
        )
        self.result.costs = json.loads(done.stdout.strip().splitlines()[-1])
        line = ", ".join(f"prefetch {p} {r:,.0f}/s" for p, r in rates.items())
        self.say(
            f"[{self.name}] cost: 1 child {line}, prefetch {COST_PREFETCH[-1]} untracked "
            f"{untracked:,.0f}/s; raw {label} {raw_rate:,.0f}/s"
        )

    def _drain_prefetch(self, prefetch: int, tracked: bool | None = None) -> float:
        n = self.sizes.drain
        queue = self.queue("cost")
        ours.fill(self.filler, queue, n)
        try:
            got = ours.drain(self.uri, queue, n, 1, self.folder, tracked, prefetch=prefetch)
        finally:
            self.transport.purge(queue)
        return got.rate

    def _raw_batch_drain(self) -> float:
        n = self.sizes.drain
        with self.raw() as raw:
            assert isinstance(raw, RedisRaw)
            raw.fill(ours.payloads(n), self.sizes.batch)
            start = time.perf_counter()
            raw.drain_batches(n, RAW_BATCH)
            return n / (time.perf_counter() - start)


def measure(
    name: str,
    sizes: Sizes,
    scratch: Path,
    say: Say,
    steps: set[str] | None = None,
    peers: bool = False,
    untracked: bool = False,
) -> TransportResult:
    """Every measure of one transport (or why it was skipped); ``peers``: theirs too;
    ``untracked``: ours with status tracking off (``Session.untracked``)."""
    return Session(name, sizes, scratch, say, steps, peers, untracked).run()


def _with_option(uri: str, name: str, value: str) -> str:
    """``uri`` with the query option ``name=value`` added."""
    return uri + ("&" if "?" in uri else "?") + f"{name}={value}"


def _drop_schema(schema: str) -> None:
    """Drop a pgsql run's own schema (best effort, like the queues' removal)."""
    import psycopg

    from bench.raw import pg_conninfo

    with (
        contextlib.suppress(psycopg.Error),
        psycopg.connect(pg_conninfo(), autocommit=True) as conn,
    ):
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
