"""``python bench/handover.py URI``: where an idle AMQP consumer's wake-up goes, stage by
stage, with its connection in a relay (``asynctask_amqp.relay``) and in the consumer's
own process (``relay=false``), in alternating rounds.

A submitter process sends spaced tasks; this process reserves and acks them one by one
(as a worker child's run loop does); the relay it starts runs under this script, which
wraps a few functions of each side to note ``CLOCK_MONOTONIC`` (``time.monotonic_ns``:
one clock for every process of the machine) at each stage of a task's way:

* ``sent``: the submitter calls ``submit_task`` (its publish, then the broker's confirm)
* ``woke``: the consumer's connection returns from its blocking ``recv`` (relay, or the
  consumer itself with ``relay=false``)
* ``message``: py-amqp has the whole message (method, header, body frames)
* ``decoded``: ``AmqpConsumer._next`` returns the delivery (our decoding)
* ``framed``: the relay calls ``send`` with the hand-over frame; ``written``: it returned
* ``received``: the consumer's ``recv`` of the relay's socket returned; ``parsed``: the
  frame is decoded (``wire.Reader.receive`` returns)
* ``returned``: ``reserve`` returned the task

It prints the median (and 90th percentile) of each stage's share over the tasks. The
wrappers cost each side a microsecond or two; both modes carry the same ones::

    .venv/bin/python bench/handover.py amqp://guest:guest@127.0.0.1// --tasks 300
"""

from __future__ import annotations

import sys

# run as a script: bench/ itself is not a place to import from (its profile.py would
# shadow the standard library's)
sys.path[:] = [p for p in sys.path if not p.rstrip("/").endswith("/bench")]

import argparse  # noqa: E402
import importlib  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

now = time.monotonic_ns
#: (stage, ns, task id or "") noted by this process
events: list[tuple[str, int, str]] = []


def note(stage: str, task: str = "") -> None:
    """Note that ``stage`` happened now."""
    events.append((stage, now(), task))


def dump(path: str) -> None:
    """Write this process's events to ``path`` (JSON lines)."""
    with open(path, "w") as file:
        for event in events:
            file.write(json.dumps(event) + "\n")


def wrap_connection_side() -> None:
    """Note ``woke``, ``message`` and ``decoded`` where the AMQP connection lives."""
    # (Any: the modules' own names are rebound here, which their types do not export)
    consumer_module: Any = importlib.import_module("asynctask_amqp.consumer")
    link_module: Any = importlib.import_module("asynctask_amqp.link")

    buffered = link_module.buffered_reads

    def buffered_reads(raw: Any) -> bool:
        done: bool = buffered(raw)
        transport = raw.transport
        recv = transport._quick_recv

        def timed_recv(n: int) -> bytes:
            began = now()
            chunk: bytes = recv(n)
            if now() - began > 100_000:  # it waited (>0.1 ms): a wake-up
                note("woke")
            return chunk

        transport._quick_recv = timed_recv
        return done

    link_module.buffered_reads = buffered_reads
    real_poll_read = link_module.os.read

    class _Os:  # ``pump``'s reads, after its poll found data (a wake-up in select)
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        @staticmethod
        def read(fd: int, n: int) -> bytes:
            chunk: bytes = real_poll_read(fd, n)
            note("pumped")
            return chunk

    link_module.os = _Os()

    subscribe = consumer_module.AmqpConsumer._subscribe

    def _subscribe(self: Any) -> None:
        subscribe(self)
        channel = self._link.channel
        callback = channel.callbacks[self._tag]

        def on_message(message: Any) -> None:
            note("message")
            callback(message)

        channel.callbacks[self._tag] = on_message

    consumer_module.AmqpConsumer._subscribe = _subscribe
    next_ = consumer_module.AmqpConsumer._next

    def _next(self: Any) -> Any:
        delivery = next_(self)
        if delivery is not None:
            note("decoded", delivery.id)
        return delivery

    consumer_module.AmqpConsumer._next = _next


def relay_main(out: str) -> int:
    """The relay, wrapped (started in place of ``python -m asynctask_amqp.relay``)."""
    relay_module: Any = importlib.import_module("asynctask_amqp.relay")

    if os.environ.get("HANDOVER_PIN"):  # an experiment: relay and consumer apart
        os.sched_setaffinity(0, {1})
    wrap_connection_side()
    send = relay_module.send_data

    def timed_send(sock: Any, message: dict[str, Any]) -> None:
        ids = [d["id"] for d in message.get("deliveries") or ()]
        if ids:
            note("framed", ids[0])
        send(sock, message)
        if ids:
            note("written", ids[0])

    relay_module.send_data = timed_send
    try:
        return int(relay_module.main())
    finally:
        dump(out)


def submit_main(uri: str, queue: str, count: int, gap: float, out: str) -> int:
    """Send ``count`` tasks ``gap`` s apart once told to (a line on stdin)."""
    from asynctask.api import get_transport
    from asynctask.plugins import load_plugins

    load_plugins([])
    transport = get_transport(uri)
    sys.stdin.readline()
    sent: list[tuple[str, int, str]] = []
    for n in range(count):
        began = now()
        task = transport.submit_task(queue, {"n": n})
        sent.append(("sent", began, task))
        time.sleep(gap)
    transport.close()
    with open(out, "w") as file:
        for event in sent:
            file.write(json.dumps(event) + "\n")
    return 0


def consume(uri: str, relay: bool, count: int, gap: float, scratch: Path) -> list[dict[str, int]]:
    """One round: a consumer of a new queue takes ``count`` spaced tasks; their stages."""
    remote: Any = importlib.import_module("asynctask_amqp.remote")
    from asynctask.api import get_transport
    from asynctask.plugins import load_plugins

    load_plugins([])
    round_id = uuid.uuid4().hex[:8]
    relay_out = str(scratch / f"relay-{round_id}.jsonl")
    real = subprocess.Popen

    def popen(args: Any, *rest: Any, **kwargs: Any) -> Any:
        if "asynctask_amqp.relay" in args:
            fds = list(args[-2:])
            args = [sys.executable, "-P", __file__, "--relay", relay_out, *fds]
        return real(args, *rest, **kwargs)

    remote.subprocess.Popen = popen
    events.clear()
    reader = remote.Reader
    fill = reader._fill

    def _fill(self: Any, size: int) -> bool:
        done: bool = fill(self, size)
        note("received")
        return done

    reader._fill = _fill
    receive = reader.receive

    def _receive(self: Any) -> Any:
        message = receive(self)
        note("parsed")
        return message

    reader.receive = _receive
    full = uri + ("&" if "?" in uri else "?") + f"relay={'true' if relay else 'false'}"
    transport = get_transport(full)
    queue = f"bench_handover_{round_id}"
    submit_out = str(scratch / f"sent-{round_id}.jsonl")
    command = [sys.executable, "-P", __file__, uri, "--submit", queue, submit_out]
    command += ["--tasks", str(count), "--gap", str(gap)]
    submitter = real(command, stdin=subprocess.PIPE, text=True)
    consumer = transport.consumer(queue)
    try:
        transport.submit_task(queue, {"n": -1})  # warm up: connected, subscribed
        first = consumer.reserve(30)
        assert first is not None
        consumer.ack(first)
        events.clear()
        assert submitter.stdin is not None
        submitter.stdin.write("go\n")
        submitter.stdin.flush()
        taken = 0
        while taken < count:
            delivery = consumer.reserve(1.0)
            if delivery is None:
                continue
            note("returned", delivery.id)
            consumer.ack(delivery)
            taken += 1
    finally:
        remote.subprocess.Popen = real
        submitter.wait(60)
        consumer.close()
        transport.purge(queue)
        transport.close()
        reader._fill, reader.receive = fill, receive
    mine = list(events)
    theirs = _load(relay_out) if relay else []
    return _stages(_load(submit_out), [*mine, *theirs])


def _load(path: str) -> list[tuple[str, int, str]]:
    with open(path) as file:
        return [tuple(json.loads(line)) for line in file]


def _stages(
    sent: list[tuple[str, int, str]], seen: list[tuple[str, int, str]]
) -> list[dict[str, int]]:
    """Each task's stages: the first of each kind after its send, before the next send."""
    seen = sorted(seen, key=lambda e: e[1])
    tasks = []
    for i, (_, began, _task) in enumerate(sent):
        end = sent[i + 1][1] if i + 1 < len(sent) else began + 10**9
        stages = {"sent": began}
        for stage, ns, _ in seen:
            if stage == "pumped":  # woken in a select, read by a pump
                stage = "woke"
            if began <= ns < end and stage not in stages:
                stages[stage] = ns
        tasks.append(stages)
    return tasks


ORDER = (
    *("sent", "woke", "message", "decoded", "framed", "written", "received", "parsed"),
    "returned",
)


def report(label: str, tasks: list[dict[str, int]]) -> None:
    """Print each stage's median and p90 (microseconds since the one before)."""
    whole = [(t["returned"] - t["sent"]) / 1000 for t in tasks if "returned" in t]
    print(
        f"{label}: {len(whole)} tasks, send to reserve's return p50 "
        f"{statistics.median(whole):.0f} us, p90 {_p(whole, 0.9):.0f} us"
    )
    for before, after in itertools.pairwise(ORDER):
        steps = [(t[after] - t[before]) / 1000 for t in tasks if before in t and after in t]
        if steps:
            print(
                f"  {before:>8} -> {after:<8} p50 {statistics.median(steps):7.1f} us  "
                f"p90 {_p(steps, 0.9):7.1f} us  ({len(steps)})"
            )
    skipped = [
        (t["returned"] - t["decoded"]) / 1000 for t in tasks if "decoded" in t and "returned" in t
    ]
    if skipped:
        print(
            f"   decoded -> returned p50 {statistics.median(skipped):7.1f} us  "
            f"p90 {_p(skipped, 0.9):7.1f} us"
        )


def _p(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main(argv: list[str]) -> int:
    """Alternate relay and no-relay rounds (ABBA) and print the stages of each mode."""
    if argv[:1] == ["--relay"]:
        sys.argv = [sys.argv[0], *argv[2:]]
        return relay_main(argv[1])
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("uri")
    parser.add_argument("--tasks", type=int, default=150, help="tasks a round")
    parser.add_argument("--gap", type=float, default=0.01)
    parser.add_argument("--rounds", default="ABBA", help="A: relay, B: relay=false")
    parser.add_argument("--submit", nargs=2, metavar=("QUEUE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.submit:
        return submit_main(args.uri, args.submit[0], args.tasks, args.gap, args.submit[1])
    if os.environ.get("HANDOVER_PIN"):
        os.sched_setaffinity(0, {0})
    wrap_connection_side()  # (relay=false: the connection is here)
    scratch = Path(tempfile.mkdtemp(prefix="handover-"))
    found: dict[str, list[dict[str, int]]] = {"A": [], "B": []}
    for mode in args.rounds:
        found[mode] += consume(args.uri, mode == "A", args.tasks, args.gap, scratch)
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    for mode, label in (("A", "relay"), ("B", "relay=false")):
        if found[mode]:
            report(label, found[mode])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
