"""``asynctask workers``: the supervised worker processes (and the scheduler)."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

from asynctask import exitcodes
from asynctask.cli.common import (
    ConfigOption,
    ImportOption,
    JsonOption,
    SetOption,
    fail,
    reported_errors,
    use_settings,
)
from asynctask.cli.runreport import RunReport, summary_table
from asynctask.logs import setup_logging

if TYPE_CHECKING:
    from asynctask.plugins import Registry


def workers(
    sets: SetOption = None,
    config: ConfigOption = None,
    imports: ImportOption = None,
    scheduler: Annotated[
        bool,
        typer.Option(
            "--scheduler", help="Also run the cron scheduler of asynctask_scheduled_workers."
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Log errors only.")] = False,
    halt_when_empty: Annotated[
        bool,
        typer.Option(
            "--halt-when-empty",
            "--halt_when_empty",
            help="Stop each worker once its queue has nothing ready, in back-off or in flight; "
            "exit 0 when all have.",
        ),
    ] = False,
    grace: Annotated[
        float,
        typer.Option(
            "--grace", help="Seconds children get to finish their task on SIGTERM.", min=0
        ),
    ] = 30.0,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            help="Serve Prometheus metrics on this port (needs asynctask-prometheus); "
            "the same as the setting asynctask_metrics_port.",
            min=1,
            max=65535,
        ),
    ] = None,
    fail_on_failed: Annotated[
        bool,
        typer.Option(
            "--fail-on-failed",
            help="With --halt-when-empty: exit 1 if tasks reached the failed store during the run.",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Run one supervised child process per configured queue (and per scheduled queue).

    Example: asynctask workers --set asynctask_workers='{"emails": "send_email"}'
    """
    from asynctask.child import ChildSpec
    from asynctask.plugins import load_plugins
    from asynctask.supervisor import Supervisor

    setup_logging(quiet)
    log = logging.getLogger("asynctask.workers")
    with reported_errors():
        if fail_on_failed and not halt_when_empty:
            raise fail("--fail-on-failed needs --halt-when-empty: only a batch run ends", 2)
        if scheduler and halt_when_empty:
            raise fail(
                "--scheduler and --halt-when-empty do not go together: scheduled queues never halt",
                2,
            )
        settings = use_settings(sets, config)
        report = RunReport()
        registry = load_plugins([*settings.imports, *(imports or [])])
        settings.check_workers(registry.user_workers(), registry.unknown_worker_hint)
        specs: list[ChildSpec] = []
        for queue, worker_config in settings.workers.items():
            if worker_config is None:
                continue
            calls = worker_config.rate_max_calls
            per_child = None if calls is None else math.ceil(calls / worker_config.concurrency)
            if worker_config.rate_scope == "global":
                per_child = calls  # one budget in the backend, for every child everywhere
            for _ in range(worker_config.concurrency):
                specs.append(
                    ChildSpec(
                        queue=queue,
                        worker=worker_config.worker,
                        settings=settings.raw,
                        sources=settings.sources,
                        imports=list(imports or []),
                        parent_pid=os.getpid(),
                        halt_when_empty=halt_when_empty,
                        quiet=quiet,
                        rate_max_calls=per_child,
                        rate_period=worker_config.rate_period,
                        rate_scope=worker_config.rate_scope,
                        max_running=worker_config.max_running,
                        prefetch=worker_config.prefetch,
                        child_concurrency=worker_config.child_concurrency,
                        track_status=(
                            registry.worker_class(worker_config.worker).track_status
                            if worker_config.track_status is None
                            else worker_config.track_status
                        ),
                        grace=grace,
                        summary_path=report.path if halt_when_empty else None,
                    )
                )
        schedule_runner = None
        if settings.schedules:
            from asynctask.scheduler import scheduled_specs

            specs.extend(scheduled_specs(settings, list(imports or []), quiet))
            if scheduler:
                from asynctask.scheduler import ScheduleRunner

                schedule_runner = ScheduleRunner(settings, registry)
        elif scheduler:
            log.info("No schedules configured -- not starting scheduler")
    if not specs:
        log.info("No workers configured; terminating.")
        raise typer.Exit(0)
    with reported_errors():
        uri = settings.transport
        cls = registry.transport_class(uri)
        if not cls.features.multiprocess:
            raise fail(
                f"the transport {uri!r} lives in one process only, but asynctask workers runs "
                "workers in child processes; set asynctask_transport to filesys:, pgsql:, "
                "redis:// or amqp://",
                2,
            )
        limited = sorted({s.queue for s in specs if s.rate_scope == "global" or s.max_running})
        if limited and not (cls.keeps_limits or cls.limits_in_state):
            raise fail(
                f"queue {limited[0]!r} has global limits (rate_scope 'global' or max_running), "
                f"kept in the backend, but the {uri.split(':', 1)[0]} transport keeps no shared "
                "state for them: use redis, pgsql or filesys as asynctask_transport for that "
                "queue, or drop those limits",
                2,
            )
        # Made now, it refuses bad options before any child starts; the supervisor keeps
        # its children's liveness through it (asynctask.liveness).
        transport = cls(uri)
        # its cancel watch reads the statuses where they are kept (asynctask_state:
        # AMQP's always are elsewhere), and so may its global limits be
        transport.state_uri = settings.state
        transport.status_ttl = settings.status_ttl
        try:
            if limited:  # AMQP's are in asynctask_state: refused here without it
                transport.limits_keeper(limited[0])
            report.start(transport, specs)  # a backend that refuses us ends the run here
            stop_metrics = _start_metrics(
                registry, metrics_port or settings.metrics_port, uri, [s.queue for s in specs]
            )
        except BaseException:
            transport.close()
            raise
    supervisor = Supervisor(
        specs,
        check_interval=settings.check_child_interval,
        grace=grace,
        halt_when_empty=halt_when_empty,
        on_stop=None if schedule_runner is None else schedule_runner.stop,
        transport=transport,
    )
    if schedule_runner is not None:
        schedule_runner.start()
    try:
        code = supervisor.run()
    finally:
        if schedule_runner is not None:
            schedule_runner.stop()
        if stop_metrics is not None:
            stop_metrics()
        transport.close()
        report.stop_watching()
    if halt_when_empty and code == exitcodes.OK:
        summary = report.summary(registry.transport_class(uri), uri)
        report.close()
        typer.echo(json.dumps(summary, indent=2) if as_json else summary_table(summary))
        if fail_on_failed and any(row["failed"] for row in summary):
            log.error("Tasks reached the failed store during the run (--fail-on-failed)")
            code = exitcodes.NOT_OBTAINED
    report.close()
    raise typer.Exit(code)


def _start_metrics(
    registry: Registry, port: int | None, uri: str, queues: list[str]
) -> Callable[[], None] | None:
    """Start the metrics plugin's server, or refuse a port nobody can serve."""
    if port is None:
        return None
    from asynctask.api import get_transport

    stop: Callable[[], None] | None = registry.manager.hook.asynctask_metrics_server(
        port=port, transport=get_transport(uri), queues=sorted(set(queues))
    )
    if stop is None:
        raise fail(
            f"--metrics-port {port} (or asynctask_metrics_port) needs a metrics plugin: "
            'pip install "asynctask-prometheus"',
            exitcodes.USAGE,
        )
    return stop
