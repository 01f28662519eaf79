"""The figures of docs/reliability.md, checked against the counts of a run (no servers)."""

from __future__ import annotations

from chaos.report import Run, figures
from chaos.scenarios import Plan, Result


def _run(*results: Result) -> Run:
    return Run(
        command="python -m chaos",
        date="2026-12-07",
        plan=Plan(),
        machine={"load": "1.0", "load_after": "1.0"},
        servers={},
        uris={},
        commit="abc1234",
        results=list(results),
    )


def _live_line(run: Run) -> str:
    (line,) = [x for x in figures(run).splitlines() if "while the workers live" in x]
    return line


def test_amqp_connection_kills_repeat_within_the_tasks_in_flight_per_drop() -> None:
    # Given AMQP's long tasks under 3 connection kills, 3 tasks in flight: bound 9
    amqp = Result("amqp", "longconn", tasks=3, faults=3, duplicates=7, bound=9)
    # and the other transports' live-worker scenarios with no duplicate
    others = [Result("redis", "longconn", tasks=3, faults=3), Result("pgsql", "gil", tasks=22)]
    # When the figures are written
    line = _live_line(_run(amqp, *others))
    # Then AMQP's duplicates are held to its bound, not to 0, and the text says both
    assert line.endswith(": yes (amqp: 7 of at most 9)"), line
    assert "at most the tasks in flight per drop" in line


def test_amqp_connection_kills_beyond_the_bound_fail_the_figure() -> None:
    # Given AMQP's long tasks repeated more often than the tasks in flight per drop
    amqp = Result("amqp", "longconn", tasks=3, faults=3, duplicates=10, bound=9)
    # When the figures are written
    line = _live_line(_run(amqp))
    # Then the figure fails and says by how much
    assert ": **no** (amqp connection kills, long tasks: 10, above its bound of 9)" in line


def test_any_other_duplicate_while_the_workers_live_fails_the_figure() -> None:
    # Given a duplicate on a transport where the workers' own connection closes nothing:
    # the bound a scenario records does not excuse it, only AMQP's broker does
    redis = Result("redis", "longconn", tasks=3, faults=3, duplicates=1, bound=9)
    amqp_gil = Result("amqp", "gil", tasks=22, faults=2, duplicates=1)
    # When the figures are written
    line = _live_line(_run(redis, amqp_gil))
    # Then both are named and the figure fails
    assert ": **no** (redis connection kills, long tasks: 1; amqp GIL hog (3x the bound): 1)" in (
        line
    )
