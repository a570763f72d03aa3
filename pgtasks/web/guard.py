"""What `pgtasks serve` checks before any route sees a request (an ASGI middleware).

- Host: with no token set, a request must name an allowed host (the bind address,
  localhost, 127.0.0.1, ::1, or PGTASKS_ALLOWED_HOSTS). A page whose DNS name was
  re-pointed at 127.0.0.1 (DNS rebinding) sends its own name, so it is refused (400)
  before it can read anything.
- Origin: a write (any method but GET, HEAD, OPTIONS) from a browser must come from the
  server's own origin or PGTASKS_ALLOWED_ORIGINS (403). With no token, any web page could
  otherwise POST /api/tasks/7/cancel to 127.0.0.1:8000: the browser sends the request even
  though the page cannot read the answer. Programs (curl, httpx) send neither Origin nor
  Sec-Fetch-Site and are let through.
- Body: at most PGTASKS_API_MAX_BODY_BYTES, counted as it arrives (413 at once when
  Content-Length says more), and in within PGTASKS_API_BODY_TIMEOUT seconds (408). Without
  a limit an 83 MB body, sent without a token, raised the server's memory by 276 MB before
  the 401.

The same checks serve any ASGI app: `app.add_middleware(Guard, settings=WebSettings())`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pgtasks.web.errors import error_response
from pgtasks.web.settings import WebSettings

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


class BodyTimeout(HTTPException):
    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"the request body did not arrive within {seconds:g} s")


def host_name(host: str) -> str:
    """The name of a Host header (or an origin's netloc): no port, lower case, IPv6
    without its brackets, no trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


class Guard:
    def __init__(self, app: ASGIApp, *, settings: WebSettings) -> None:
        self.app = app
        self.hosts = settings.host_names() if settings.checks_hosts() else None
        self.origins = settings.origins()
        self.max_body = settings.api_max_body_bytes
        self.body_timeout = settings.api_body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            status, code, message, hint = refusal
            response = error_response(status, code, message, hint)
            if status == 413:  # the rest of the body is not read: the connection must go
                response.headers["Connection"] = "close"
            await response(scope, receive, send)
            return
        cut = False  # the body was refused part way: close the connection after answering

        def refuse(exc: HTTPException) -> HTTPException:
            nonlocal cut
            cut = True
            return exc

        async def closing_send(message: Message) -> None:
            if cut and message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"connection", b"close")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, self._limited(receive, refuse), closing_send)

    def _refusal(self, scope: Scope, headers: Headers) -> tuple[int, str, str, str] | None:
        host = headers.get("host", "")
        if self.hosts is not None and host_name(host) not in self.hosts:
            return (
                400,
                "host_not_allowed",
                f"this server does not answer to the host {host[:100]!r}",
                "Add the name to PGTASKS_ALLOWED_HOSTS (comma-separated; * for any).",
            )
        if scope["method"] not in SAFE_METHODS and not self._same_origin(headers, host):
            return (
                403,
                "cross_origin",
                "writes are accepted from this server's own pages only",
                "A proxy or another site: add its origin to PGTASKS_ALLOWED_ORIGINS.",
            )
        length = headers.get("content-length")
        if length is not None:
            if not (length.isascii() and length.isdigit()):
                return (400, "bad_request", "Content-Length is not a number", "")
            if int(length) > self.max_body:
                return (
                    413,
                    "too_large",
                    f"the request body is larger than {self.max_body} bytes",
                    "Raise PGTASKS_API_MAX_BODY_BYTES, or send less.",
                )
        return None

    def _same_origin(self, headers: Headers, host: str) -> bool:
        origin = headers.get("origin")
        if origin is not None:
            origin = origin.strip().rstrip("/").lower()
            if origin in self.origins:
                return True
            netloc = urlsplit(origin).netloc if "://" in origin else ""
            return bool(netloc) and netloc == host.strip().lower()
        # No Origin (older browsers on some requests): the fetch metadata says who asked.
        return headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")

    def _limited(
        self, receive: Receive, refuse: Callable[[HTTPException], HTTPException]
    ) -> Receive:
        """`receive` counting the body's bytes against the limit and the deadline; the
        refusal is an HTTPException, which FastAPI passes on to the route's answer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        seen = 0
        done = False

        async def limited() -> Message:
            nonlocal seen, done
            if done:  # the body is in: what follows is a disconnect, however late
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message: dict[str, Any] = dict(await receive())
            except TimeoutError:
                raise refuse(BodyTimeout(self.body_timeout)) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise refuse(BodyTooLarge(self.max_body))
                done = not message.get("more_body", False)
            return message

        return limited
