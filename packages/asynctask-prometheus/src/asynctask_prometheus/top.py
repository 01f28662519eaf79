"""``asynctask top``: a live terminal view of the queues, one line a queue.

Counts (ready, in flight, retrying, failed; ``~N`` where the transport estimates one) and
the age of the oldest ready task come from the transport at each refresh; processed/s and
failed/s over the last minute come from the workers' Prometheus endpoints (see
``rates``). rich draws the table: it redraws in place without flicker, sizes columns to
the terminal and is already installed with typer.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer

from asynctask.cli.common import (
    ConfigOption,
    SetOption,
    count_text,
    reported_errors,
    use_settings,
)

if TYPE_CHECKING:
    from rich.table import Table

    from asynctask.transport import Transport
    from asynctask_prometheus.rates import Rates

#: the counts shown, in their columns' order; an estimated one reads ``~N`` (pgsql above
#: 10,000, ``QueueStats.estimated``), as in ``asynctask queues``
COUNTS = ("ready", "in_flight", "retrying", "failed")

MetricsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--metrics",
        help="A workers' metrics URL (repeat for several hosts). Default: "
        "http://127.0.0.1:<asynctask_metrics_port>/metrics when that setting is set.",
        metavar="URL",
    ),
]


def top(
    sets: SetOption = None,
    config: ConfigOption = None,
    metrics: MetricsOption = None,
    queues: Annotated[
        list[str] | None,
        typer.Option("--queue", help="Show only this queue (repeat for several).", metavar="NAME"),
    ] = None,
    interval: Annotated[
        float, typer.Option("--interval", help="Seconds between refreshes.", min=0.2)
    ] = 2.0,
    once: Annotated[
        bool,
        typer.Option(
            "--once",
            help="Print one frame and exit (rates are then measured over one interval).",
        ),
    ] = False,
) -> None:
    """A live view of every queue: counts, rates over the last minute, oldest ready task.

    Rates need the workers' metrics (asynctask workers --metrics-port). Ctrl-C quits.
    """
    from rich.console import Console
    from rich.live import Live

    from asynctask.api import get_transport
    from asynctask_prometheus.rates import Rates

    with reported_errors():
        settings = use_settings(sets, config)
        urls = list(metrics or [])
        if not urls and settings.metrics_port is not None:
            urls = [f"http://127.0.0.1:{settings.metrics_port}/metrics"]
        view = View(get_transport(), Rates(), urls, queues or None)
        view.sample()
        if once:
            if urls:
                time.sleep(interval)
                view.sample()
            Console().print(view.frame())
            return
        try:
            with Live(view.frame(), auto_refresh=False, screen=True) as live:
                while True:
                    time.sleep(interval)
                    view.sample()
                    live.update(view.frame(), refresh=True)
        except KeyboardInterrupt:
            return


class View:
    """What ``top`` shows: the transport's counts and the metrics' rates."""

    def __init__(
        self, transport: Transport, rates: Rates, urls: list[str], queues: list[str] | None
    ) -> None:
        self.transport = transport
        self.rates = rates
        self.urls = urls
        self.queues = queues
        self.errors: list[str] = []

    def sample(self) -> None:
        """Read the metrics endpoints once."""
        from asynctask_prometheus.rates import read_totals

        if self.urls:
            totals, self.errors = read_totals(self.urls)
            self.rates.add(totals)

    def frame(self) -> Table:
        """One frame: a table of every queue the transport knows (or those asked for)."""
        return frame(self.transport, self.rates, self.urls, self.errors, self.queues)


def frame(
    transport: Transport,
    rates: Rates,
    urls: list[str],
    errors: list[str],
    queues: list[str] | None = None,
) -> Table:
    """One frame: a table of the queues."""
    from rich.table import Table

    table = Table(
        title=f"asynctask top  {transport.safe_uri}  {datetime.now():%H:%M:%S}",
        title_justify="left",
        caption=_caption(urls, errors),
        caption_justify="left",
    )
    table.add_column("queue", no_wrap=True)
    for name in ("ready", "in flight", "retrying", "failed", "processed/s", "failed/s"):
        table.add_column(name, justify="right")
    table.add_column("oldest ready", justify="right")
    now = time.time()
    listed = transport.queues() if queues is None else [transport.queue_stats(q) for q in queues]
    for stats in listed:
        per_second = rates.per_second(stats.name) if urls else None
        oldest = transport.oldest_ready(stats.name)
        table.add_row(
            stats.name,
            *(count_text(getattr(stats, n), n in stats.estimated) for n in COUNTS),
            "-" if per_second is None else f"{per_second[0]:.1f}",
            "-" if per_second is None else f"{per_second[1]:.1f}",
            "-" if oldest is None else _age(max(0.0, now - oldest)),
        )
    return table


def _caption(urls: list[str], errors: list[str]) -> str:
    if not urls:
        return "rates: none (start the workers with --metrics-port, or pass --metrics URL)"
    text = "rates over the last minute from " + ", ".join(urls)
    if errors:
        text += "\nunreachable: " + "; ".join(errors)
    return text


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
