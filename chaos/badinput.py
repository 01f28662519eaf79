"""Bad input: what another program or local user can write into a backend, and its outcome.

Each case writes one hostile message (or file) by hand into a fresh queue, between two
good tasks, in the transport's documented storage format, as another program would;
then the run loop every worker child runs (``asynctask.runner.run_loop``) takes the queue
until it is idle. The case keeps its promise (DESIGN.md section 10) when:

* the bad message is in the failed store with a reason, or was refused with a message
  where it was written (a submit, a database that refuses the text);
* the worker went on: both good neighbours ran exactly once, on their first attempt
  (a message fetched beside a bad one is not charged an attempt);
* a failing task read with a forged attempt count ran at most ``max_retries + 1`` times;
* nothing the bad message pointed at (a symlink's target) shows in the failed store.

``make chaos`` writes the table of every case on every transport to
docs/reliability.md; ``tests/hostile`` asserts each case on each transport.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asynctask import AsyncTaskWorker, InvalidTaskError, Transport
from asynctask.runner import LoopOptions, run_loop
from asynctask.transport import Delivery
from chaos.servers import Backend, FilesysBackend, Unsupported

#: the limit the cases run with (asynctask_max_payload_bytes), small so the cases are quick
LIMIT = 64 * 1024
#: the signing key of the signing cases
KEY = "chaos-signing-key-0123456789"
#: text a symlink's target holds; it must never show in the failed store
SECRET_TEXT = "TOP-SECRET-TARGET-CONTENT"
#: how long a case's run loop may take before it counts as a stuck worker
CASE_TIMEOUT = 30.0


def nested(depth: int) -> str:
    """A JSON object nested ``depth`` deep, as text (no Python recursion to build it)."""
    return '{"a":' * depth + "1" + "}" * depth


@dataclass
class Outcome:
    """What one case did on one transport."""

    case: str
    transport: str
    #: "failed store", "refused", "ran N times", "stuck", "unsupported", "error"
    outcome: str = ""
    detail: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """The case kept its promise."""
        return not self.problems

    def cell(self) -> str:
        """The outcome as a table cell."""
        if self.outcome == "unsupported":
            return "n/a"
        detail = re.sub(r"(.)\1{5,}", r"\1\1\1...", self.detail)  # 'qqqq...' of a long name
        detail = detail.removeprefix("undecodable message: ")
        text = self.outcome + (f": {detail[:90]}" if detail else "")
        return text.replace("|", "/").replace("\n", " ") + ("" if self.ok else " **FAILED**")


class Neighbour(AsyncTaskWorker):
    """Records each task it runs with its attempt; fails the ones marked ``fail``."""

    name = "chaos_neighbour"
    max_retries = 1
    retry_backoff = 0.01

    def __init__(self) -> None:
        super().__init__()
        self.ran: list[tuple[Any, int]] = []

    def process(self, payload: dict[str, Any]) -> None:
        """Record; raise for a task marked ``fail``."""
        delivery: Delivery | None = self.delivery
        self.ran.append((payload.get("n"), delivery.attempt if delivery else 0))
        if payload.get("fail"):
            raise RuntimeError("failing on purpose")


Writer = Callable[[Backend, str, Path], None]


@dataclass(frozen=True)
class Case:
    """One kind of bad input."""

    name: str
    write: Writer
    #: what the failed store's error must contain
    reason: str
    #: the worker holds the signing key
    signed: bool = False
    #: the bad message is a task that fails: it must run at most max_retries + 1 times
    runs_at_most: int | None = None


def _text(data: str | bytes) -> Writer:
    return lambda backend, queue, scratch: backend.write_raw(queue, data)


def _negative_attempts(backend: Backend, queue: str, scratch: Path) -> None:
    backend.write_raw(queue, '{"n": "bad", "fail": true}', attempts=-30)


def _unsigned(backend: Backend, queue: str, scratch: Path) -> None:
    backend.write_raw(queue, '{"n": "bad"}')


def _badly_signed(backend: Backend, queue: str, scratch: Path) -> None:
    backend.write_raw(queue, '{"n": "bad"}', headers={"asynctask-signature": "v1=" + "0" * 64})


def _filesys(backend: Backend) -> FilesysBackend:
    if not isinstance(backend, FilesysBackend):
        raise Unsupported("a file-system case")
    return backend


def _fifo(backend: Backend, queue: str, scratch: Path) -> None:
    ready = _filesys(backend).ready_folder(queue)
    os.mkfifo(ready / f"{_stamp()}-chaos-fifo.json", 0o600)


def _symlink_to_secret(backend: Backend, queue: str, scratch: Path) -> None:
    ready = _filesys(backend).ready_folder(queue)
    secret = scratch / f"secret-{uuid.uuid4().hex[:8]}.json"
    secret.write_text(f'{{"secret": "{SECRET_TEXT}"}}')
    os.symlink(secret, ready / f"{_stamp()}-chaos-link.json")


def _symlink_to_dev_zero(backend: Backend, queue: str, scratch: Path) -> None:
    ready = _filesys(backend).ready_folder(queue)
    os.symlink("/dev/zero", ready / f"{_stamp()}-chaos-zero.json")


def _long_name(backend: Backend, queue: str, scratch: Path) -> None:
    # 120 two-byte characters: 240 bytes, a legal name (255 at most), and not ours
    _filesys(backend).write_raw(queue, "not JSON", name="é" * 120 + ".json")


def _directory(backend: Backend, queue: str, scratch: Path) -> None:
    ready = _filesys(backend).ready_folder(queue)
    (ready / f"{_stamp()}-chaos-dir.json").mkdir()


def _stamp() -> str:
    import time

    return f"{time.time_ns():019d}"


CASES: tuple[Case, ...] = (
    Case("text that is not JSON", _text("this is not JSON"), "undecodable"),
    Case("JSON cut short", _text('{"unclosed": '), "undecodable"),
    Case("a JSON array", _text("[1, 2, 3]"), "JSON object"),
    Case("a JSON string", _text('"just a string"'), "JSON object"),
    Case("bytes that are not UTF-8", _text(b'{"n": "\xff\xfe"}'), "undecodable"),
    Case("an object nested 3,000 deep", _text(nested(3000)), "nested too deeply"),
    Case("an integer of 5,000 digits", _text('{"n": ' + "9" * 5000 + "}"), "digits"),
    Case(
        f"a message over the limit ({LIMIT} bytes)",
        _text('{"blob": "' + "x" * LIMIT + '"}'),
        "over the limit",
    ),
    Case("a failing task with attempts -30", _negative_attempts, "", runs_at_most=2),
    Case("an unsigned task (worker has a key)", _unsigned, "signature", signed=True),
    Case("a badly signed task", _badly_signed, "signature", signed=True),
    Case("filesys: a FIFO in ready/", _fifo, "not a regular file"),
    Case("filesys: a symlink to a readable file", _symlink_to_secret, "not a regular file"),
    Case("filesys: a symlink to /dev/zero", _symlink_to_dev_zero, "not a regular file"),
    Case("filesys: a folder in ready/", _directory, "not a regular file"),
    Case("filesys: a name of 120 two-byte characters", _long_name, "undecodable"),
)


def run_case(
    case: Case, backend: Backend, transport: Transport, scratch: Path, queue: str | None = None
) -> Outcome:
    """Write ``case`` between two good tasks, run the loop until idle, judge the outcome.

    ``transport`` must be a transport of its own (its limit and keys are set here).
    """
    outcome = Outcome(case.name, backend.name)
    queue = queue or f"bad_{uuid.uuid4().hex[:12]}"
    transport.max_payload_bytes = LIMIT
    transport.signing_keys = (KEY,) if case.signed else ()
    transport.submit_task(queue, {"n": 1})
    try:
        case.write(backend, queue, scratch)
    except Unsupported as exc:
        outcome.outcome, outcome.detail = "unsupported", str(exc)
        transport.purge(queue)
        return outcome
    except Exception as exc:  # the store refused it: a promise kept where it was written
        outcome.outcome, outcome.detail = "refused", f"{type(exc).__name__}: {exc}"
        transport.purge(queue)
        return outcome
    transport.submit_task(queue, {"n": 2})
    worker = Neighbour()
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            run_loop(
                worker, transport, queue, LoopOptions(halt_when_empty=True, wait=0.3, prefetch=4)
            )
        except BaseException as exc:
            errors.append(exc)

    options_stop = threading.Thread(target=loop, name=f"bad-input {case.name}", daemon=True)
    options_stop.start()
    options_stop.join(CASE_TIMEOUT)
    if options_stop.is_alive():
        outcome.outcome = "stuck"
        outcome.problems.append(f"the worker was still busy after {CASE_TIMEOUT:g} s")
        return outcome
    if errors:
        outcome.outcome = "worker stopped"
        outcome.detail = f"{type(errors[0]).__name__}: {errors[0]}"
        outcome.problems.append(f"the run loop raised {outcome.detail[:200]}")
    _judge(case, outcome, worker, transport, queue)
    with contextlib.suppress(Exception):
        transport.purge(queue)
        transport.purge_failed(queue)
    return outcome


def _judge(
    case: Case, outcome: Outcome, worker: Neighbour, transport: Transport, queue: str
) -> None:
    good = sorted((n, a) for n, a in worker.ran if n in (1, 2))
    if good != [(1, 1), (2, 1)]:
        outcome.problems.append(f"good neighbours ran as (n, attempt) {good}, not once each")
    bad_runs = [a for n, a in worker.ran if n not in (1, 2)]
    failed = transport.failed_tasks(queue)
    shown = " ".join(f"{f.error} {f.raw} {f.payload}" for f in failed)
    if SECRET_TEXT in shown:
        outcome.problems.append("the symlink's target shows in the failed store")
    if case.runs_at_most is not None:
        if len(bad_runs) > case.runs_at_most:
            outcome.problems.append(f"ran {len(bad_runs)} times, over {case.runs_at_most}")
        if not outcome.outcome:
            outcome.outcome = f"ran {len(bad_runs)} times, then failed store"
    elif bad_runs:
        outcome.problems.append(f"the bad message ran {len(bad_runs)} times")
    if len(failed) != 1:
        outcome.problems.append(f"{len(failed)} entries in the failed store, not 1")
    elif case.reason.lower() not in failed[0].error.lower():
        outcome.problems.append(
            f"failed-store reason {failed[0].error[:120]!r} lacks {case.reason!r}"
        )
    if not outcome.outcome:
        outcome.outcome = "failed store"
    if failed and not outcome.detail:
        outcome.detail = failed[0].error.splitlines()[-1] if failed[0].error else ""


#: what submit must refuse, on every transport: (case, payload or None, queue name)
SUBMIT_CASES: tuple[tuple[str, Any, str | None], ...] = (
    ("submit: a queue name of 101 characters", {"n": 1}, "q" * 101),
    (f"submit: a payload over the limit ({LIMIT} bytes)", {"blob": "x" * LIMIT}, None),
    ("submit: a payload nested 600 deep", None, None),
)


def run_submit_case(name: str, payload: Any, queue: str | None, transport: Transport) -> Outcome:
    """Submit something the rules refuse: it must raise ``InvalidTaskError`` and write nothing."""
    outcome = Outcome(name, type(transport).__name__)
    transport.max_payload_bytes = LIMIT
    target = queue or f"bad_{uuid.uuid4().hex[:12]}"
    if payload is None:
        value: Any = 1
        for _ in range(600):
            value = {"a": value}
        payload = value
    try:
        transport.submit_task(target, payload)
    except InvalidTaskError as exc:
        outcome.outcome, outcome.detail = "refused", str(exc)
        return outcome
    except Exception as exc:
        outcome.outcome, outcome.detail = "error", f"{type(exc).__name__}: {exc}"
        outcome.problems.append(f"raised {outcome.detail[:200]}, not InvalidTaskError")
        return outcome
    outcome.outcome = "accepted"
    outcome.problems.append("accepted")
    return outcome


def run_all(backend: Backend, scratch: Path, say: Callable[[str], None]) -> list[Outcome]:
    """Every case on one (started) backend, with a transport of its own; then the submit
    cases. The transport's limit and keys are the cases' own."""
    from asynctask import get_transport

    transport = type(get_transport(backend.uri))(backend.uri)
    outcomes = []
    try:
        for case in CASES:
            try:
                outcome = run_case(case, backend, transport, scratch)
            except Exception as exc:  # the table shows it; the next case runs
                outcome = Outcome(case.name, backend.name, "error", f"{type(exc).__name__}: {exc}")
                outcome.problems.append(outcome.detail)
            outcome.transport = backend.name
            say(f"    {case.name}: {outcome.cell()}")
            outcomes.append(outcome)
        for name, payload, queue in SUBMIT_CASES:
            outcome = run_submit_case(name, payload, queue, transport)
            outcome.transport = backend.name
            say(f"    {name}: {outcome.cell()}")
            outcomes.append(outcome)
    finally:
        transport.close()
    return outcomes
