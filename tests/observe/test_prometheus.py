"""``asynctask workers --metrics-port``: the supervisor serves the sums of its children."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from asynctask import get_transport
from asynctask.testing import FAST_CHECKS, clean_environment, workers_command
from support import free_port, scrape, total, wait_for

MAX_RETRIES = 2  # test_mixed's


def test_scrapes_during_and_after_a_known_mix_count_exactly(
    backend_uri, queue, ledger, start_workers
):
    # Given N tasks that succeed and M that fail every attempt, on two children
    n_ok, m_fail = 20, 3
    port = free_port()
    transport = get_transport(backend_uri)
    transport.submit_tasks(
        queue,
        [{"ledger": str(ledger), "n": i, "seconds": 0.1} for i in range(n_ok)]
        + [{"ledger": str(ledger), "n": 100 + i, "fail": True} for i in range(m_fail)],
    )
    # When the workers run with --metrics-port
    workers = start_workers(
        backend_uri,
        {queue: {"worker": "test_mixed", "concurrency": 2}},
        "--metrics-port",
        str(port),
    )
    # Then a scrape during the run sees both children and work still to do (the endpoint
    # is up before the children start, so wait for them)
    during = wait_for(
        lambda: (s := scrape(port)) and total(s, "asynctask_children", queue=queue) == 2 and s,
        30,
        "both children in the metrics",
    )
    ready_or_running = total(during, "asynctask_queue_tasks", queue=queue, state="ready") + total(
        during, "asynctask_queue_tasks", queue=queue, state="in_flight"
    )
    done_during = total(during, "asynctask_tasks_total", queue=queue, outcome="succeeded")
    assert ready_or_running > 0 and done_during < n_ok

    # and once everything is settled, exactly N succeeded and M failed, after their retries
    def settled():
        s = scrape(port)
        ok = total(s, "asynctask_tasks_total", queue=queue, outcome="succeeded") == n_ok
        return (
            s
            if ok and total(s, "asynctask_tasks_total", queue=queue, outcome="failed") == m_fail
            else None
        )

    try:
        after = wait_for(settled, 90, f"{n_ok} successes and {m_fail} failures")
    except AssertionError:
        last = scrape(port)
        counts = {o: total(last, "asynctask_tasks_total", queue=queue, outcome=o)
                  for o in ("succeeded", "retried", "failed")}  # fmt: skip
        workers.signal(signal.SIGTERM)
        workers.wait(60)
        raise AssertionError(f"last counts {counts}; workers said:\n{workers.output()}") from None
    assert (
        total(after, "asynctask_tasks_total", queue=queue, outcome="retried")
        == m_fail * MAX_RETRIES
    )
    assert total(after, "asynctask_task_duration_seconds_count", queue=queue) == n_ok + m_fail * (
        MAX_RETRIES + 1
    )
    assert total(after, "asynctask_task_duration_seconds_sum", queue=queue) >= n_ok * 0.1
    assert total(after, "asynctask_queue_tasks", queue=queue, state="ready") == 0
    assert total(after, "asynctask_queue_tasks", queue=queue, state="failed") == m_fail
    assert total(after, "asynctask_child_restarts_total", queue=queue) == 0
    # and a later scrape still says the same (nothing counted twice)
    again = scrape(port)
    for outcome in ("succeeded", "failed", "retried"):
        assert total(again, "asynctask_tasks_total", queue=queue, outcome=outcome) == total(
            after, "asynctask_tasks_total", queue=queue, outcome=outcome
        )
    workers.signal(signal.SIGTERM)
    assert workers.wait(60) == 0


def test_a_restarted_child_keeps_its_counts_and_the_restart_is_counted(
    filesys_uri, queue, ledger, start_workers
):
    # Given workers with metrics that have processed 3 tasks
    port = free_port()
    transport = get_transport(filesys_uri)
    transport.submit_tasks(queue, [{"ledger": str(ledger), "n": i} for i in range(3)])
    workers = start_workers(filesys_uri, {queue: "test_mixed"}, "--metrics-port", str(port))
    wait_for(
        lambda: total(scrape(port), "asynctask_tasks_total", queue=queue, outcome="succeeded") == 3,
        30,
        "3 successes",
    )
    # When its child is killed and the supervisor starts another, which runs 2 more
    [child] = workers.children()
    os.kill(child, signal.SIGKILL)
    wait_for(lambda: workers.children() not in ([], [child]), 30, "a new child")
    transport.submit_tasks(queue, [{"ledger": str(ledger), "n": i} for i in range(2)])
    # Then the counts of both children are summed, and one restart is counted
    after = wait_for(
        lambda: (
            (s := scrape(port))
            and total(s, "asynctask_tasks_total", queue=queue, outcome="succeeded") == 5
            and s
        ),
        30,
        "5 successes",
    )
    assert total(after, "asynctask_child_restarts_total", queue=queue) == 1
    assert total(after, "asynctask_children", queue=queue) == 1
    workers.signal(signal.SIGTERM)
    assert workers.wait(60) == 0


@pytest.mark.parametrize("how", ["option", "setting"])
def test_metrics_port_without_the_plugin_exits_2_naming_it(filesys_uri, queue, tmp_path, how):
    port = str(free_port())
    args = ["--metrics-port", port] if how == "option" else []
    settings = {
        **FAST_CHECKS,
        **({"asynctask_metrics_port": int(port)} if how == "setting" else {}),
    }
    env = clean_environment(ASYNCTASK_DISABLE_PLUGINS="prometheus")
    done = subprocess.run(
        workers_command(filesys_uri, {queue: "test_mixed"}, *args, settings=settings),
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "asynctask-prometheus" in done.stderr


def test_grafana_dashboard_reads_only_series_the_supervisor_serves(
    filesys_uri, queue, start_workers
):
    # Given the dashboard shipped in the package
    import json
    import re
    from importlib.resources import files

    text = files("asynctask_prometheus").joinpath("dashboards/asynctask.json").read_text()
    dashboard = json.loads(text)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {
        re.sub(r"_(bucket|count|sum)$", "", m)
        for e in exprs
        for m in re.findall(r"asynctask_\w+", e)
    }
    # When a supervisor with metrics has run one task
    port = free_port()
    get_transport(filesys_uri).submit_task(queue, {"n": 1})
    workers = start_workers(filesys_uri, {queue: "test_mixed"}, "--metrics-port", str(port))
    served = wait_for(
        lambda: (s := scrape(port)) and total(s, "asynctask_tasks_total", queue=queue) == 1 and s,
        30,
        "one task counted",
    )
    names = {re.sub(r"_(bucket|count|sum)$", "", n) for n, _ in served}
    # Then every series the dashboard asks for is served, and it is importable as is
    assert used <= names, used - names
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    assert all(p["datasource"]["uid"] == "${DS_PROMETHEUS}" for p in dashboard["panels"])
    workers.signal(signal.SIGTERM)
    assert workers.wait(60) == 0


def test_without_metrics_port_the_finished_hook_bows_out_after_one_task():
    # Given a fresh process with the plugin installed but no --metrics-port (no
    # PROMETHEUS_MULTIPROC_DIR): an idle plugin must not cost every task a hook call
    code = (
        "import sys\n"
        "from asynctask import AsyncTaskWorker, get_transport, events\n"
        "from asynctask.plugins import load_plugins\n"
        "from asynctask.runner import LoopOptions, run_loop\n"
        "load_plugins()\n"
        "def ours():\n"
        "    return [i for i in events._finished.impls\n"
        "            if i.plugin_name.startswith('prometheus')]\n"
        "assert ours(), [i.plugin_name for i in events._finished.impls]\n"
        "class Ok(AsyncTaskWorker):\n"
        "    name = 'ok_prometheus_idle'\n"
        "    def process(self, payload):\n"
        "        return None\n"
        "t = get_transport('localmem:')\n"
        "t.submit_tasks('q_idle', [{}, {}, {}])\n"
        "run_loop(Ok(), t, 'q_idle', LoopOptions(stop_when_idle=True, wait=0.01))\n"
        "print(len(ours()))\n"
    )
    env = clean_environment()
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    # When three tasks run in it
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    # Then its finished hook is no longer called in that process
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0", done.stdout
