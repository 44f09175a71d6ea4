"""Private deployments (``--auth-file``): Gradio's own login, made strict.

Gradio asks for a login (``launch(auth=...)``: a login page, a ``POST /login`` that sets an http-only cookie)
and refuses its page config, API info, queue, uploads and files without it. :class:`LoginGate` adds what it
leaves out: failed logins are limited per client address (HTTP 429 once an address has used up its tries), the
few Gradio routes that answer without a login (heartbeat, cancel, reset, streams) answer 401 too, and the login
page loses the API description Gradio writes into it; without a login nothing but the login page itself and the
operators' routes is reached.

Passwords only pass through: Gradio reads the login form and calls :func:`make_auth_check`'s function; nothing
here reads a request body or logs a user name that failed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.requests import cookie_parser

from ..auth import LoginThrottle, PasswordFile
from ..ratelimit import canonical_address
from .gradio_adapter import logged_in_user, without_api_info

log = logging.getLogger("glmimage.access")

LOGIN_PATHS = ("/login", "/login/")
# What the login page itself needs before anyone has logged in, and the operators' routes (which hold nothing
# private: see README "Monitoring"). Gradio checks the login itself on its page and API routes.
OPEN_PATHS = frozenset(
    {
        "/",
        "/logout",
        "/favicon.ico",
        "/manifest.json",
        "/robots.txt",
        "/theme.css",
        "/config",
        "/config/",
        "/gradio_api/theme.css",
        "/gradio_api/startup-events",
        "/gradio_api/login_check",
        "/gradio_api/login_check/",
        "/healthz",
        "/readyz",
        "/metrics",
    }
)
OPEN_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def make_auth_check(passwords: PasswordFile) -> Callable[[str, str], Awaitable[bool]]:
    """The ``auth`` function for ``launch()``: async, so the slow bcrypt check runs on a worker thread and never
    holds up the event loop (Gradio awaits a coroutine function)."""

    async def check(user: str, password: str) -> bool:
        ok = await asyncio.to_thread(passwords.verify, user, password)
        if ok:
            log.info("login: %s", user)
        return ok

    return check


class LoginGate:
    """ASGI middleware: throttles failed logins per address and answers 401 to every unlisted route without a
    login. ``server_app`` gives Gradio's app (it exists only once the server is launched)."""

    def __init__(
        self,
        app: Any,
        *,
        server_app: Callable[[], Any],
        throttle: LoginThrottle,
    ) -> None:
        self.app = app
        self.server_app = server_app
        self.throttle = throttle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path in LOGIN_PATHS and scope.get("method") == "POST":
            await self._login(scope, receive, send)
        elif self._user(scope) is not None:
            await self.app(scope, receive, send)
        elif path == "/" and scope.get("method") == "GET":
            await self._login_page(scope, receive, send)
        elif path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            await _json(send, 401, {"detail": "Not authenticated"})

    def _user(self, scope: Scope) -> str | None:
        header = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"cookie"), "")
        return logged_in_user(self.server_app(), cookie_parser(header)) if header else None

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        address = self._address(scope)
        wait = self.throttle.retry_after(address)
        if wait > 0:
            log.warning("login refused: too many failed logins from one address")
            seconds = max(1, math.ceil(wait))
            message = f"Too many failed logins. Try again in {seconds} s."
            await _json(send, 429, {"detail": message}, [(b"retry-after", str(seconds).encode())])
            return
        status: list[int] = []

        async def watch(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        await self.app(scope, receive, watch)
        if status and status[0] == 400:  # Gradio's answer to wrong credentials
            self.throttle.failed(address)
            log.info("login failed")

    async def _login_page(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Gradio's login page, without the API description it would write into it."""
        start: dict[str, Any] = {}
        body: list[bytes] = []

        async def collect(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                body.append(message.get("body", b""))

        await self.app(scope, receive, collect)
        page = b"".join(body)
        if start.get("status") == 200:
            page = without_api_info(page)
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(page)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": page})

    def _address(self, scope: Scope) -> str:
        """The client address after uvicorn's proxy-header handling (its middleware runs before this one)."""
        client = scope.get("client")
        return canonical_address(client[0] if client else None)


async def _json(send: Send, status: int, body: dict[str, Any], extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
