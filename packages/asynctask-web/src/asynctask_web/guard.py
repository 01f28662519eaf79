"""Who may use the dashboard, and which POSTs are real: the token and the CSRF check.

Token (when one is set, always beyond loopback): an API client sends ``Authorization:
Bearer <token>``; a browser opens ``/?token=<token>`` once and is redirected to the same
page without it, holding a cookie (HttpOnly, SameSite=Strict) that carries a digest of
the token, never the token. Every other request gets 401.

Host (without a token): only a loopback name is answered (``127.0.0.1``, ``localhost``,
``[::1]``), so a page of another site whose name an attacker rebinds to 127.0.0.1 (DNS
rebinding) is refused instead of reading the dashboard as its own origin.

CSRF: every changing action is a POST whose form carries ``csrf``, a random value made
when the server starts and written into its pages. Another site cannot read our pages, so
it cannot know the value; a POST without it (or with an ``Origin`` that is not ours) gets
403. An API client that authenticates with the ``Authorization`` header needs no CSRF
value: a browser never adds that header to another site's request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

COOKIE = "asynctask_web"
#: the names a dashboard without a token answers to
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
#: headers on every response: no framing (clickjacking), scripts and styles from us only
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # (no-referrer makes a form POST send Origin: null)
    "Cache-Control": "no-store",
}


class Guard:
    """Pure ASGI middleware: the token check and the security headers."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token
        self.cookie_value = None if token is None else _digest(token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        request = Request(scope)
        refusal = self.host_refusal(request) or self.refusal(request)
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        scope.setdefault("state", {})["bearer"] = _bearer(request) is not None
        await self.app(scope, receive, send_with_headers)

    def host_refusal(self, request: Request) -> Response | None:
        """Without a token, a request naming any host but a loopback one is refused."""
        if self.token is not None:
            return None
        host = request.headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].split("]")[0]
        if name in LOOPBACK_NAMES:
            return None
        return PlainTextResponse(
            f"refused: this dashboard has no token, so it answers only to 127.0.0.1, "
            f"localhost or [::1], not to {host!r}; start it with --token to reach it by "
            "another name",
            status_code=421,
        )

    def refusal(self, request: Request) -> Response | None:
        """The response that stops ``request``, or None to let it through."""
        if self.token is None or request.url.path.startswith("/static/"):
            return None
        bearer = _bearer(request)
        if bearer is not None:
            if hmac.compare_digest(bearer.encode(), self.token.encode()):
                return None
            return _unauthorized(request, "wrong token in the Authorization header")
        given = request.query_params.get("token")
        if given is not None and request.method == "GET":
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return _unauthorized(request, "wrong token")
            # the token leaves the address bar (and history) at once
            rest = [(k, v) for k, v in parse_qsl(request.url.query) if k != "token"]
            target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
            response = RedirectResponse(target, status_code=303)
            assert self.cookie_value is not None
            response.set_cookie(
                COOKIE, self.cookie_value, httponly=True, samesite="strict", path="/"
            )
            return response
        cookie = request.cookies.get(COOKIE)
        if cookie is not None and hmac.compare_digest(
            cookie.encode(), (self.cookie_value or "").encode()
        ):
            return None
        return _unauthorized(request, "this dashboard asks for a token")


def _digest(token: str) -> str:
    return hmac.new(token.encode(), b"asynctask-web cookie", hashlib.sha256).hexdigest()


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def _unauthorized(request: Request, why: str) -> Response:
    text = f"{why}: open /?token=<token> once in a browser, or send 'Authorization: Bearer <token>'"
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": text}, status_code=401)
    return PlainTextResponse(text, status_code=401)


class Csrf:
    """The server's CSRF value and its check."""

    def __init__(self) -> None:
        self.value = secrets.token_urlsafe(32)

    def problem(self, request: Request, form: dict[str, list[str]]) -> str | None:
        """Why a POST must be refused, or None."""
        if request.scope.get("state", {}).get("bearer"):
            return None  # the Authorization header: no browser sends it cross-site
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
            return f"refused: a POST from another origin ({origin})"
        given = (form.get("csrf") or [request.headers.get("x-csrf-token", "")])[0]
        if not given or not hmac.compare_digest(given.encode(), self.value.encode()):
            return (
                "refused: this form has no valid CSRF value (the server may have restarted): "
                "reload the page and try again"
            )
        return None
