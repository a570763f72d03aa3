"""`pgtasks serve`'s server: uvicorn (h11) with the timeouts that keep slow or idle clients
from holding connections.

uvicorn times out idle keep-alive connections (timeout_keep_alive) and bounds the request
head (h11_max_incomplete_event_size), but it waits for a request's headers forever: 150
connections that sent half a request line stayed open for as long as they liked. The
protocol below gives each request PGTASKS_API_HEADER_TIMEOUT seconds from its first byte
(or from the connection's start) to send its headers, then closes it (answering 408 when
part of a request came); the
body's own deadline is the Guard's (pgtasks.web.guard). A response sent before the body
was read (a 401, a 413) closes the connection instead of reading the rest.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from pgtasks.web.settings import WebSettings


def _raw(status: int, reason: str, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 response in the API's error shape, for the protocol to write
    itself when no request (and so no app) exists."""
    body = json.dumps({"error": {"code": code, "message": message, "hint": None}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def protocol(header_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with a deadline on each request's headers."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._watch_headers()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch_headers()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_timer()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
                # Answered before the body was read: reading the rest would only let a
                # slow client keep the connection (each byte put off the keep-alive timer).
                self.transport.close()

        def send_400_response(self, msg: str) -> None:
            # A request h11 could not parse (or a head over h11_max_incomplete_event_size):
            # the API's error shape instead of uvicorn's plain text.
            self.transport.write(_raw(400, "Bad Request", "bad_request", msg))
            self.transport.close()

        def _watch_headers(self) -> None:
            """Time the headers while they are due: the connection is new, or a request
            has begun arriving. Once they are in (h11 left IDLE), the timer stops; between
            requests, uvicorn's keep-alive timeout rules."""
            if self.conn.their_state is not h11.IDLE:
                self._stop_timer()
            elif self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout, self._expired)

        def _stop_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expired(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                if self.conn.trailing_data[0]:  # part of a request: say why it ends
                    message = f"the request's headers did not arrive within {header_timeout:g} s"
                    self.transport.write(_raw(408, "Request Timeout", "request_timeout", message))
                # A connection that sent nothing (a browser's preconnect) is closed quietly:
                # a 408 there could be read as the answer to a request sent just after.
                self.transport.close()

    return Protocol


def config_options(settings: WebSettings) -> dict[str, Any]:
    """The uvicorn options of the timeouts and limits in `settings`."""
    return {
        "http": protocol(settings.api_header_timeout),
        "timeout_keep_alive": settings.api_keep_alive_timeout,
        "h11_max_incomplete_event_size": settings.api_max_header_bytes,
    }
