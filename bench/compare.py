"""``python -m bench.compare BASE``: the bench of commit BASE and of this tree, in one run.

Issue 12's rule: no ``make bench`` figure falls more than 5% below the parent commit's,
measured in the same run on both commits. BASE is checked out in a temporary git worktree
with its own venv (``uv sync``); for each transport the two benches run back to back in
``--rounds`` rounds (2: ABBA, who goes first alternating), each measure's best kept (as
``make bench`` keeps the best of its rounds), so both meet the same machine load. It
prints every figure of both, the change, and the ones more than 5% worse (``--out PATH``
also as Markdown). ``make bench-compare BASE=00bd0fa`` uses quick sizes, where a change of
tens of percent on a busy machine is noise; ``FULL=1`` (full sizes) decides.

Against a commit before status tracking (issue 16, whose cost has its own budget):
``--untracked`` runs this tree's bench with tracking off (``bench --untracked``) and
``--base-plugins`` switches off in this tree the plugins the base did not have
(``make bench-compare UNTRACKED=1``); docs/benchmarks.md's "Against 00bd0fa" section.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from asynctask.plugins import DISABLE_VARIABLE
from bench.ours import ROOT
from bench.plan import EXTRA_PLUGINS_OFF, TEST_PLUGINS, TRANSPORTS

#: a figure this much worse than the base's is a regression (issue 12)
TOLERANCE = 0.05


def _uv() -> str:
    found = shutil.which("uv")
    return found or str(ROOT / ".venv-uv" / "bin" / "uv")


def _plugins(tree: Path) -> set[str]:
    """The asynctask plugins (entry point names) installed in ``tree``'s venv."""
    code = (
        "from importlib.metadata import entry_points\n"
        "print(','.join(e.name for e in entry_points(group='asynctask')))"
    )
    done = subprocess.run(
        [str(tree / ".venv" / "bin" / "python"), "-c", code], capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    return {n for n in done.stdout.strip().split(",") if n}


def _bench(
    tree: Path,
    name: str,
    quick: bool,
    out: Path,
    steps: str | None,
    untracked: bool = False,
    plugins_off: str = "",
) -> dict[str, Any]:
    """One transport's bench in ``tree`` (its own ``.venv``); its JSON (empty if it failed).

    ``untracked``: this tree's bench with ``--untracked`` (status tracking off); only
    this tree is given it, a base commit's bench knows no such flag. ``plugins_off``:
    more plugins switched off in its processes (``bench.plan.EXTRA_PLUGINS_OFF``).
    """
    command = [str(tree / ".venv" / "bin" / "python"), "-m", "bench", "--only", name]
    command += ["--json", str(out)] + (["--quick"] if quick else [])
    # a full run writes docs/benchmarks.md: not the tree's own, with one transport in it
    command += ["--docs", str(out.with_suffix(".docs"))]
    bench_main = (tree / "bench" / "__main__.py").read_text()
    if steps and "--steps" in bench_main:
        command += ["--steps", steps]  # an older bench without --steps runs every step
    if untracked:
        command += ["--untracked"]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    if plugins_off:
        env[EXTRA_PLUGINS_OFF] = plugins_off
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if not out.exists():
        print(f"  {tree.name} {name}: no results ({done.stderr.strip()[-300:]})", file=sys.stderr)
        return {}
    measures: dict[str, Any] = json.loads(out.read_text())["transports"][name]["measures"]
    return measures


def best(kept: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Each measure's best of two runs: the higher rate, the shorter time."""
    merged = dict(kept)
    for key, row in new.items():
        old = merged.get(key)
        if old is None or change(old["ours"], row["ours"], row["unit"]) > 0:
            merged[key] = row
    return merged


def _probe(tree: Path, name: str, quick: bool) -> dict[str, Any]:
    """``bench.probe`` (this tree's) run by ``tree``'s venv: that commit's packages."""
    one, batch = (300, 3000) if quick else (3000, 15_000)
    command = [str(tree / ".venv" / "bin" / "python"), "-m", "bench.probe", name]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    done = subprocess.run(
        [*command, str(one), str(batch)], cwd=ROOT, env=env, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        print(f"  {tree.name} {name}: {done.stderr.strip()[-300:]}", file=sys.stderr)
        return {}
    measures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return measures


def _server(tree: Path, name: str, untracked: bool, plugins_off: str) -> subprocess.Popen[str]:
    """``bench.probe NAME --serve`` (this tree's) run by ``tree``'s venv, once it is ready."""
    command = [str(tree / ".venv" / "bin" / "python"), "-m", "bench.probe", name, "--serve"]
    command += ["--untracked"] if untracked else []
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env[DISABLE_VARIABLE] = f"{TEST_PLUGINS},{plugins_off}" if plugins_off else TEST_PLUGINS
    server = subprocess.Popen(
        command, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )  # fmt: skip
    assert server.stdin is not None and server.stdout is not None
    if server.stdout.readline().strip() != "ready":
        server.kill()
        raise RuntimeError(f"{tree.name}: bench.probe {name} --serve did not start")
    return server


def interleaved(
    tree: Path, name: str, count: int, chunk: int, untracked: bool, plugins_off: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``submit_one`` of the base (``tree``) and of this tree, measured by the same code
    (``bench.probe --serve``) in two processes taking turns, ``chunk`` submits each (ABBA),
    both pinned to one CPU: they meet the same disk, load and server within milliseconds.
    (Each commit's own bench has its own harness: 00bd0fa's kept the best of 3 rounds,
    this tree's sums turns taken with the raw client; unpinned, the scheduler kept one
    of two identical processes 45% slower than the other against one redis-server.)
    Each side's figure is the median of its turns' rates: an fsync stalled for tens of
    milliseconds moves one turn, not the figure."""
    servers = [_server(tree, name, False, ""), _server(ROOT, name, untracked, plugins_off)]
    cpu = max(os.sched_getaffinity(0))
    for server in servers:
        os.sched_setaffinity(server.pid, {cpu})
    rates: list[list[float]] = [[], []]
    try:
        for turn in range(max(1, count // chunk)):
            for side in (0, 1) if turn % 2 == 0 else (1, 0):
                stdin, stdout = servers[side].stdin, servers[side].stdout
                assert stdin is not None and stdout is not None
                stdin.write(f"{chunk}\n")
                stdin.flush()
                rates[side].append(chunk / float(stdout.readline()))
    finally:
        for server in servers:
            if server.stdin is not None:
                server.stdin.write("0\n")
                server.stdin.close()
            server.wait(60)
    ratios = sorted(b / a for a, b in zip(*rates, strict=True))
    print(
        f"  [{name}] {len(ratios)} turns of {chunk} on CPU {cpu}: turn ratios this tree / "
        f"base {ratios[len(ratios) // 10]:.2f}-{ratios[-1 - len(ratios) // 10]:.2f} "
        f"(10th-90th percentile), median {statistics.median(ratios):.3f}",
        file=sys.stderr,
    )
    label = {"unit": "tasks/s", "label": "submit, one by one (interleaved)"}
    return (
        {"submit_one": {**label, "ours": statistics.median(rates[0])}},
        {"submit_one": {**label, "ours": statistics.median(rates[1])}},
    )


def change(base: float, head: float, unit: str) -> float:
    """How much better head is than base (+0.10: 10% better); times are better lower."""
    if unit == "tasks/s":
        return head / base - 1 if base else 0.0
    return base / head - 1 if head else 0.0


def compare(
    base: dict[str, dict[str, Any]], head: dict[str, dict[str, Any]]
) -> list[tuple[str, str, str, float, float, float]]:
    """(transport, measure, unit, base, head, change) of every figure both measured."""
    rows = []
    for name, measures in head.items():
        for key, row in measures.items():
            old = base.get(name, {}).get(key)
            if old is None:
                continue
            rows.append(
                (name, row["label"], row["unit"], old["ours"], row["ours"],
                 change(old["ours"], row["ours"], row["unit"]))
            )  # fmt: skip
    return rows


def markdown(base: str, rows: list[tuple[str, str, str, float, float, float]]) -> str:
    """The comparison as a Markdown table; regressions in bold."""
    out = [
        f"| transport | measure | {base} | this tree | change |",
        "|---|---|---|---|---|",
    ]
    for name, label, unit, old, new, delta in rows:
        mark = f"**{delta:+.0%}**" if delta < -TOLERANCE else f"{delta:+.0%}"
        out.append(f"| {name} | {label} | {old:,.2f} {unit} | {new:,.2f} {unit} | {mark} |")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    """Run both benches; 1 when a figure is more than 5% worse than the base's."""
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    parser.add_argument("base", help="the commit to compare with (e.g. the parent: 00bd0fa)")
    parser.add_argument("--quick", action="store_true", help="quick sizes (a smoke run)")
    parser.add_argument("--only", metavar="NAMES", help="comma-separated transports")
    parser.add_argument("--steps", metavar="NAMES", help="comma-separated steps (both benches)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="runs of each side per transport, alternating "
        "who goes first (ABBA), the best of each kept (default 2)",
    )  # fmt: skip
    parser.add_argument(
        "--probe", action="store_true", help="only the submit figures, by this tree's "
        "bench.probe on both commits' packages (minutes, not the whole bench)",
    )  # fmt: skip
    parser.add_argument(
        "--interleaved", type=int, metavar="N", help="only submit one by one: N submits "
        "each side, both measured by this tree's bench.probe in two processes taking "
        "turns of 50 on one CPU, the median turn kept (the same harness for both "
        "commits; see interleaved())",
    )  # fmt: skip
    parser.add_argument(
        "--untracked", action="store_true", help="this tree's bench with status tracking "
        "off (bench --untracked), the base's as it is: the fair comparison with a commit "
        "before status tracking (issue 16), whose cost has its own budget",
    )  # fmt: skip
    parser.add_argument(
        "--base-plugins", action="store_true", help="switch off in this tree's bench the "
        "plugins the base commit does not have (e.g. otel): both measure the same ones",
    )  # fmt: skip
    parser.add_argument("--out", metavar="PATH", type=Path, help="also write Markdown here")
    args = parser.parse_args(argv)
    names = TRANSPORTS if not args.only else tuple(n.strip() for n in args.only.split(","))
    scratch = Path(tempfile.mkdtemp(prefix="asynctask-compare-"))
    tree = scratch / "base"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(tree), args.base], cwd=ROOT, check=True,
        capture_output=True,
    )  # fmt: skip
    try:
        env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
        subprocess.run(
            [_uv(), "sync", "--all-packages", "--frozen", "-q"], cwd=tree, env=env, check=True
        )
        base: dict[str, dict[str, Any]] = {}
        head: dict[str, dict[str, Any]] = {}
        off = ",".join(sorted(_plugins(ROOT) - _plugins(tree))) if args.base_plugins else ""
        if off:
            print(f"this tree's bench runs with these plugins off: {off}", file=sys.stderr)
        for name in names:
            if args.interleaved:
                base[name], head[name] = interleaved(
                    tree, name, args.interleaved, 50, args.untracked, off
                )
                one = compare({name: base[name]}, {name: head[name]})
                print(markdown(args.base, one), flush=True)
                continue
            for turn in range(args.rounds):
                print(f"[{name}] {args.base} and this tree, round {turn + 1}", file=sys.stderr)
                order = [(tree, base, "base"), (ROOT, head, "head")]
                for where, into, tag in order if turn % 2 == 0 else order[::-1]:
                    out = scratch / f"{tag}-{name}-{turn}.json"
                    if args.probe:
                        got = _probe(where, name, args.quick)
                    else:
                        ours = where == ROOT
                        got = _bench(
                            where, name, args.quick, out, args.steps,
                            untracked=args.untracked and ours, plugins_off=off if ours else "",
                        )  # fmt: skip
                    into[name] = best(into.get(name, {}), got)
            # each transport's figures as soon as they are in: a long run can be cut short
            one = compare({name: base.get(name, {})}, {name: head.get(name, {})})
            print(markdown(args.base, one), flush=True)
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False,
            capture_output=True,
        )  # fmt: skip
        shutil.rmtree(scratch, ignore_errors=True)
    rows = compare(base, head)
    text = markdown(args.base, rows)
    print(text)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
    worse = [r for r in rows if r[5] < -TOLERANCE]
    print(f"{len(worse)} of {len(rows)} figures more than {TOLERANCE:.0%} worse than {args.base}")
    return 1 if worse else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
