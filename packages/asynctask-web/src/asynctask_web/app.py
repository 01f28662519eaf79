"""The ASGI application: pages at ``/``, JSON under ``/api/``, POSTs that change.

Routes (DESIGN.md section 8)::

    /                               queues with counts and rates (refreshed live)
    /queues/<name>                  counts, a page of waiting tasks, the first in flight
    /queues/<name>/in-flight        tasks held by workers (who, since when)
    /queues/<name>/failed           failed tasks, with requeue and purge
    /tasks/<id>                     a task's status and result
    /schedules  /plugins  /settings
    /api/...                        the same data as JSON
    ?offset=N                       the page of 100 from N (lists of tasks)
    POST /queues/<name>/failed/requeue, /queues/<name>/failed/purge   (ids=..., or all)
    POST /queues/<name>/purge       the waiting tasks

Transport calls block, so each runs in a worker thread; the transport is shared.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import jinja2
import markupsafe
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from asynctask.errors import AsynctaskError, InvalidTaskError, NotSupportedError
from asynctask.settings import Settings, get_settings
from asynctask.status import StatusNotKept
from asynctask.transport import Transport
from asynctask.validation import check_queue_name
from asynctask_web import data
from asynctask_web.guard import Csrf, Guard
from asynctask_web.rates import LiveRates

HERE = Path(__file__).parent
Endpoint = Callable[[Request], Awaitable[Response]]


def create_app(
    transport: Transport,
    *,
    token: str | None = None,
    metrics_urls: list[str] | None = None,
    settings: Settings | None = None,
) -> Starlette:
    """The dashboard for ``transport``; with ``token``, every client must give it."""
    return Dashboard(transport, token, metrics_urls or [], settings or get_settings()).app


class Dashboard:
    """The routes and what they share: the transport, the templates, the CSRF value."""

    def __init__(
        self, transport: Transport, token: str | None, metrics_urls: list[str], settings: Settings
    ) -> None:
        self.transport = transport
        self.settings = settings
        self.rates = LiveRates(metrics_urls)
        self.csrf = Csrf()
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,  # every value is escaped: a payload's <script> is text
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters.update(
            json=_json_text, when=_when, age=_age, count=_count, rate=_rate, q=_quote
        )
        self.templates.globals.update(page_link=_page_link)
        routes = [
            Route("/", self.page(self.queues_data, "queues.html")),
            Route("/queues/{name}", self.page(self.queue_data, "queue.html")),
            Route("/queues/{name}/in-flight", self.page(self.in_flight_data, "in_flight.html")),
            Route("/queues/{name}/failed", self.page(self.failed_data, "failed.html")),
            Route("/queues/{name}/failed/requeue", self.failed_action("requeue"), methods=["POST"]),
            Route("/queues/{name}/failed/purge", self.failed_action("purge"), methods=["POST"]),
            Route("/queues/{name}/purge", self.purge_waiting, methods=["POST"]),
            Route("/tasks", self.find_task),
            Route("/tasks/{task_id}", self.page(self.task_data, "task.html")),
            Route("/schedules", self.page(self.schedules_data, "schedules.html")),
            Route("/plugins", self.page(self.plugins_data, "plugins.html")),
            Route("/settings", self.page(self.settings_data, "settings.html")),
            Route("/api/queues", self.api(self.queues_data)),
            Route("/api/queues/{name}", self.api(self.queue_data)),
            Route("/api/queues/{name}/in-flight", self.api(self.in_flight_data)),
            Route("/api/queues/{name}/failed", self.api(self.failed_data)),
            Route("/api/tasks/{task_id}", self.api(self.task_data)),
            Route("/api/schedules", self.api(self.schedules_data)),
            Route("/api/plugins", self.api(self.plugins_data)),
            Route("/api/settings", self.api(self.settings_data)),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
        self.app = Starlette(routes=routes)
        self.app.add_middleware(Guard, token=token)

    # -- what each route shows (blocking: run in a thread) --------------------------------

    def queues_data(self, request: Request) -> dict[str, Any]:
        self.rates.sample()
        return data.queues(self.transport, self.rates)

    def queue_data(self, request: Request) -> dict[str, Any]:
        return data.queue(self.transport, _queue_name(request), *_page(request))

    def in_flight_data(self, request: Request) -> dict[str, Any]:
        return data.in_flight(self.transport, _queue_name(request), *_page(request))

    def failed_data(self, request: Request) -> dict[str, Any]:
        return data.failed(self.transport, _queue_name(request), *_page(request))

    def task_data(self, request: Request) -> dict[str, Any]:
        task_id = request.path_params["task_id"]
        found = data.task(self.transport, task_id)
        if found is None:
            raise NotFound(f"no task {task_id!r}: the store never had it, or has forgotten it")
        return {"task": found}

    def schedules_data(self, request: Request) -> dict[str, Any]:
        return {"schedules": data.schedules(self.settings)}

    def plugins_data(self, request: Request) -> dict[str, Any]:
        return data.plugins(self.settings)

    def settings_data(self, request: Request) -> dict[str, Any]:
        return {"settings": data.settings_rows(self.settings)}

    # -- pages and JSON -------------------------------------------------------------------

    def page(self, read: Callable[[Request], dict[str, Any]], template: str) -> Endpoint:
        """A GET endpoint rendering ``template`` with what ``read`` returns."""

        async def endpoint(request: Request) -> Response:
            status = 200
            try:
                context = await run_in_threadpool(read, request)
            except (NotFound, AsynctaskError) as exc:
                status, context = _status(exc), {"error": str(exc)}
                template_used = "error.html"
            else:
                template_used = template
            context.update(
                request=request,
                csrf=self.csrf.value,
                transport=self.transport.safe_uri,
                notice=request.query_params.get("notice"),
                now=time.time(),
            )
            html = self.templates.get_template(template_used).render(context)
            return HTMLResponse(html, status_code=status)

        return endpoint

    def api(self, read: Callable[[Request], dict[str, Any]]) -> Endpoint:
        """A GET endpoint returning what ``read`` returns as JSON."""

        async def endpoint(request: Request) -> Response:
            try:
                body = await run_in_threadpool(read, request)
            except (NotFound, AsynctaskError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=_status(exc))
            return JSONResponse(body)

        return endpoint

    # -- changing actions -----------------------------------------------------------------

    def failed_action(self, action: str) -> Endpoint:
        """POST: requeue or purge failed tasks (``ids`` fields, or ``all=1``)."""

        async def endpoint(request: Request) -> Response:
            form = await _form(request)
            refused = self.csrf.problem(request, form)
            if refused is not None:
                return _refused(request, refused)
            name = request.path_params["name"]
            ids = None if form.get("all") == ["1"] else form.get("ids", [])
            call = (
                self.transport.requeue_failed
                if action == "requeue"
                else self.transport.purge_failed
            )
            try:
                count = await run_in_threadpool(call, check_queue_name(name), ids)
            except AsynctaskError as exc:
                return _refused(request, str(exc), status=_status(exc))
            done = "requeued" if action == "requeue" else "purged"
            return _after(request, f"/queues/{quote(name)}/failed", f"{done} {count} task(s)")

        return endpoint

    async def purge_waiting(self, request: Request) -> Response:
        """POST: purge the queue's ready and delayed tasks."""
        form = await _form(request)
        refused = self.csrf.problem(request, form)
        if refused is not None:
            return _refused(request, refused)
        name = request.path_params["name"]
        try:
            count = await run_in_threadpool(self.transport.purge, check_queue_name(name))
        except AsynctaskError as exc:
            return _refused(request, str(exc), status=_status(exc))
        return _after(request, f"/queues/{quote(name)}", f"purged {count} waiting task(s)")

    async def find_task(self, request: Request) -> Response:
        """GET /tasks?id=...: the lookup form's target."""
        task_id = request.query_params.get("id", "").strip()
        target = f"/tasks/{quote(task_id, safe='')}" if task_id else "/"
        return RedirectResponse(target, status_code=303)


class NotFound(Exception):
    """A task id the store does not know."""


def _queue_name(request: Request) -> str:
    return check_queue_name(request.path_params["name"])


#: the largest ``?offset=``: a page costs the backend up to offset + limit entries read
#: (a folder's names, an AMQP queue's messages), so a link cannot ask for unbounded work
MAX_OFFSET = 1_000_000


def _page(request: Request) -> tuple[int, int]:
    """``(limit, offset)`` from ``?limit=N`` (0 to ``data.PAGE``; the live refresh asks
    for 0: counts only) and ``?offset=N`` (0 to ``MAX_OFFSET``)."""
    limit = _number(request, "limit", data.PAGE, data.PAGE)
    return limit, _number(request, "offset", 0, MAX_OFFSET)


def _number(request: Request, name: str, default: int, largest: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    # isascii: str.isdigit() also takes digits int() refuses ("²"), a 500 before
    if not (text.isascii() and text.isdigit()) or int(text) > largest:
        raise InvalidTaskError(f"{name} must be a whole number from 0 to {largest}, got {text!r}")
    return int(text)


def _status(exc: BaseException) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, InvalidTaskError):
        return 400
    if isinstance(exc, NotSupportedError | StatusNotKept):
        return 501
    return 503


async def _form(request: Request) -> dict[str, list[str]]:
    """A urlencoded form's fields (a POST of ours carries no files)."""
    body = await request.body()
    if len(body) > 1_000_000:
        return {}
    return parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)


def _refused(request: Request, text: str, status: int = 403) -> Response:
    if request.headers.get("accept", "").startswith("application/json") or request.scope.get(
        "state", {}
    ).get("bearer"):
        return JSONResponse({"error": text}, status_code=status)
    return HTMLResponse(
        f"<!doctype html><title>refused</title><p>{_escape(text)}</p>", status_code=status
    )


def _after(request: Request, path: str, notice: str) -> Response:
    """Back to the page after a POST (303), or a JSON answer for an API client."""
    if request.scope.get("state", {}).get("bearer"):
        return JSONResponse({"done": notice})
    return RedirectResponse(f"{path}?{urlencode({'notice': notice})}", status_code=303)


def _escape(text: str) -> str:
    return str(markupsafe.escape(text))


# -- template filters --------------------------------------------------------------------


def _json_text(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def _when(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _count(value: int | None, estimated: bool = False) -> str:
    """A count: ``-`` where the transport cannot tell, ``~`` before an estimate."""
    if value is None:
        return "-"
    return f"~{value}" if estimated else str(value)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _quote(value: str) -> str:
    return quote(value, safe="")


def _page_link(request: Request, offset: int) -> str:
    """The current page's path with ``?offset=`` set (other parameters kept, a notice
    dropped)."""
    params = {k: v for k, v in request.query_params.items() if k not in ("offset", "notice")}
    if offset:
        params["offset"] = str(offset)
    query = urlencode(params)
    return request.url.path + (f"?{query}" if query else "")
