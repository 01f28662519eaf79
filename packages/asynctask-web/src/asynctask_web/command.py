"""``asynctask web``: serve the dashboard with uvicorn.

Only typer is imported at module level: every ``asynctask`` run loads this module to
list the command, and Starlette, uvicorn and the transport drivers load only when the
command runs.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

import typer

from asynctask.cli.common import ConfigOption, SetOption, fail, reported_errors, use_settings

#: exit code of bad usage or settings (DESIGN.md section 4)
USAGE = 2


def web(
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to listen on. Anything but a loopback address needs a token.",
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.", min=1, max=65535)] = 8080,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            help="Ask every client for this token (at least 16 characters; default: the "
            "setting asynctask_web_token). A browser gives it once as /?token=...; API "
            "clients send 'Authorization: Bearer <token>'.",
            envvar="ASYNCTASK_WEB_TOKEN",
            show_envvar=False,
        ),
    ] = None,
    metrics: Annotated[
        list[str] | None,
        typer.Option(
            "--metrics",
            help="A workers' metrics URL for the rates (repeat for several hosts). Default: "
            "http://127.0.0.1:<asynctask_metrics_port>/metrics when that setting is set.",
            metavar="URL",
        ),
    ] = None,
    sets: SetOption = None,
    config: ConfigOption = None,
) -> None:
    """Serve the web dashboard: queues, failed tasks, schedules, plugins, settings.

    Example: asynctask web --port 8080   (then open http://127.0.0.1:8080/)
    """
    with reported_errors():
        settings = use_settings(sets, config)
        token = token or settings.web_token
        if token is not None and len(token) < 16:
            raise fail("--token must be at least 16 characters", USAGE)
        if token is None and not is_loopback(host):
            raise fail(
                f"asynctask web would listen on {host}, beyond this machine, without a "
                "token: give one with --token or the setting asynctask_web_token, or "
                "listen on 127.0.0.1",
                USAGE,
            )
        if token is not None:
            from asynctask.uri import remember_secret

            remember_secret(token)
        urls = list(metrics or [])
        if not urls and settings.metrics_port is not None:
            urls = [f"http://127.0.0.1:{settings.metrics_port}/metrics"]

        import uvicorn

        from asynctask.api import get_transport
        from asynctask_web.app import create_app

        transport = get_transport()
        app = create_app(transport, token=token, metrics_urls=urls, settings=settings)
        shown = f"[{host}]" if ":" in host else host
        typer.echo(f"asynctask web: serving {transport.safe_uri} on http://{shown}:{port}/")
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def is_loopback(host: str) -> bool:
    """Whether ``host`` listens on this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything
