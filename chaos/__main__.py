"""``python -m chaos`` (``make chaos``): every scenario on every transport.

Examples::

    python -m chaos                                   # all: prints the table, writes docs/
    python -m chaos --only filesys,redis              # some transports
    python -m chaos --only redis --scenarios kills --tasks 200 --kills 5 \\
        --uri redis=redis://127.0.0.1:6379/0 --json /tmp/chaos.json   # the CI scenario
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import logging
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from asynctask.api import close_transports
from asynctask.uri import redact
from bench import machine
from chaos import badinput, limits, liveness, partition, report
from chaos.scenarios import SCENARIOS, Plan, Result, Say, run_scenario
from chaos.servers import BACKENDS, Backend
from chaos.supervisor import ROOT

_ALL = (*SCENARIOS, *liveness.SCENARIOS, partition.SCENARIO, limits.SCENARIO)
#: scenarios on servers of their own, in namespaces (chaos.hosts)
_HOSTED = {partition.SCENARIO: partition.run_partition, limits.SCENARIO: limits.run_limits}


def _parser() -> argparse.ArgumentParser:
    defaults = Plan()
    parser = argparse.ArgumentParser(
        prog="python -m chaos",
        description="asynctask's delivery promise under faults, on every transport.",
    )
    parser.add_argument(
        "--only", metavar="NAMES", help=f"transports, comma-separated ({','.join(BACKENDS)})"
    )
    parser.add_argument(
        "--scenarios",
        metavar="NAMES",
        help=f"scenarios, comma-separated ({','.join(_ALL)})",
    )
    parser.add_argument("--tasks", type=int, default=defaults.tasks, help="tasks per scenario")
    parser.add_argument("--kills", type=int, default=defaults.kills, help="child kills")
    parser.add_argument(
        "--hosts", type=int, default=defaults.hosts, help="hosts of the partition scenario"
    )
    parser.add_argument(
        "--partition-tasks",
        type=int,
        default=defaults.partition_tasks,
        help="tasks of the partition scenario",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=defaults.feed_seconds,
        help="seconds over which each scenario's tasks are fed (and its faults spread)",
    )
    parser.add_argument(
        "--uri",
        action="append",
        default=[],
        metavar="NAME=URI",
        help="run NAME on this server as it is (no restart, no connection kills)",
    )
    parser.add_argument(
        "--bad-input-only",
        action="store_true",
        help="only write the bad-input cases (no scenario, no restart) and update the "
        "bad-input table of docs/reliability.md",
    )
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write the results as JSON")
    parser.add_argument(
        "--docs",
        metavar="DIR",
        type=Path,
        help="write reliability.md here (default: docs/, on a run of everything only)",
    )
    return parser


def _names(text: str | None, known: tuple[str, ...]) -> tuple[str, ...]:
    names = known if not text else tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown: {', '.join(unknown)}; known: {', '.join(known)}")
    return names


def main(argv: list[str]) -> int:
    """Run the suite; 0 when every scenario that ran kept the promise."""
    args = _parser().parse_args(argv)
    transports = _names(args.only, tuple(BACKENDS))
    scenarios = () if args.bad_input_only else _names(args.scenarios, _ALL)
    bad_input = args.bad_input_only or "poison" in scenarios
    given = dict(pair.split("=", 1) for pair in args.uri)
    plan = Plan(
        tasks=args.tasks,
        kills=args.kills,
        feed_seconds=args.seconds,
        hosts=args.hosts,
        partition_tasks=args.partition_tasks,
    )
    # only a full run replaces docs/reliability.md
    full = not (args.only or args.scenarios or args.uri or plan != Plan())
    docs = args.docs if args.docs is not None else (ROOT / "docs" if full else None)
    logging.basicConfig(level=logging.WARNING, format="    %(name)s: %(message)s")

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    run = report.Run(
        command="make chaos" if not argv else "python -m chaos " + shlex.join(argv),
        date=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        plan=plan,
        machine=machine.machine(),
        servers={},
        uris={},
        commit=machine.commit(ROOT),
    )
    scratch = Path(tempfile.mkdtemp(prefix="asynctask-chaos-"))
    began = time.monotonic()
    for name in transports:
        backend = BACKENDS[name](scratch, given.get(name))
        shared = tuple(s for s in scenarios if s not in _HOSTED)
        if shared or bad_input:
            run.results += _run_transport(backend, shared, bad_input, plan, scratch, run, say)
        for scenario in (s for s in scenarios if s in _HOSTED):
            say(f"{name}:\n  {scenario}...")
            result = _HOSTED[scenario](name, plan, scratch, say, run.servers)
            state = result.skipped or ("ok" if result.ok else "FAILED")
            say(f"  {scenario}: {state} in {result.seconds:.0f} s")
            run.results.append(result)
    run.seconds = time.monotonic() - began
    run.machine["load_after"] = machine.load()
    if run.results:
        print(report.table(run.results))
    for line in report.problems(run.results):
        print(line.replace("**", ""))
    if run.bad_input:
        print(report.bad_input_table(run.bad_input).replace("**", ""))
    print(f"\n{run.seconds:.0f} s in all")
    if not run.ok:
        say(f"kept the ledgers and worker logs in {scratch}")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json is not None:
        report.write_json(run, args.json)
    if args.bad_input_only:  # only the bad-input section of the page changes
        page = (args.docs or ROOT / "docs") / "reliability.md"
        section = report.bad_input_markdown(run.bad_input, run.command, run.date)
        old = page.read_text(encoding="utf-8") if page.exists() else "# Reliability\n"
        page.write_text(report.replace_bad_input(old, section), encoding="utf-8")
        print(f"wrote the bad-input table of {page}")
    elif scenarios and set(scenarios) <= set(_HOSTED) and args.docs is not None:
        # a run of the many-hosts scenarios alone replaces their own section only
        page = args.docs / "reliability.md"
        old = page.read_text(encoding="utf-8") if page.exists() else "# Reliability\n"
        section = report.many_hosts_markdown(run)
        page.write_text(
            report.replace_section(old, report.MANY_HOSTS_TITLE, section), encoding="utf-8"
        )
        print(f"wrote the many-hosts section of {page}")
    elif docs is not None:
        docs.mkdir(parents=True, exist_ok=True)
        (docs / "reliability.md").write_text(report.markdown(run), encoding="utf-8")
        print(f"wrote {docs / 'reliability.md'}")
    return 0 if run.ok else 1


def _run_transport(
    backend: Backend,
    scenarios: tuple[str, ...],
    bad_input: bool,
    plan: Plan,
    scratch: Path,
    run: report.Run,
    say: Say,
) -> list[Result]:
    say(f"{backend.name}:")
    if importlib.util.find_spec(f"asynctask_{backend.name}") is None:
        say("  skipped: not installed")
        return [Result(backend.name, s, skipped="not installed") for s in scenarios]
    try:
        backend.start()
    except Exception as exc:
        say(f"  skipped: {type(exc).__name__}: {exc}")
        return [Result(backend.name, s, skipped=f"not available: {exc}") for s in scenarios]
    results = []
    try:
        with contextlib.suppress(Exception):
            run.servers[backend.name] = backend.version()
        run.uris[backend.name] = redact(backend.uri)
        for scenario in scenarios:
            say(f"  {scenario}...")
            runner = liveness.run_scenario if scenario in liveness.SCENARIOS else run_scenario
            result = runner(backend, scenario, plan, scratch, say)
            state = result.skipped or ("ok" if result.ok else "FAILED")
            say(f"  {scenario}: {state} in {result.seconds:.0f} s")
            results.append(result)
        if bad_input:
            say("  bad input...")
            run.bad_input += badinput.run_all(backend, scratch, say)
    finally:
        close_transports()
        backend.stop()
    return results


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
