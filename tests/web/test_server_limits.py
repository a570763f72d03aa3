"""`pgtasks serve` (real uvicorn) against clients that hold connections: half-sent requests,
idle keep-alive connections, an oversized head, and event streams against the pool.

Each socket test waits for the server to close the socket (EOF), with a generous timeout
that only bounds a hang: a server without the deadlines keeps such sockets open forever.
"""

from __future__ import annotations

import contextlib
import socket
import time

import httpx
import pytest

from pgtasks import Client
from tests.web.serving import Served, serve

pytestmark = pytest.mark.slow

HANG = 60.0  # seconds before a socket the server should have closed counts as a hang


def connect(server: Served, first: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server.port), timeout=HANG)
    if first:
        s.sendall(first)
    return s


def until_closed(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    got = b""
    with s:
        while chunk := s.recv(65536):
            got += chunk
    return got


def test_half_sent_requests_are_answered_408_and_closed(dsn):
    with serve(dsn, api_header_timeout="1", api_body_timeout="1") as server:
        heads = [
            connect(server, b"GET /api/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */")
            for _ in range(75)
        ]
        silent = [connect(server, b"") for _ in range(25)]  # connected, sent nothing
        body = b'{"task_type": "x", "params": {"k": "'
        bodies = [
            connect(
                server,
                b"POST /api/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n" + body,
            )
            for _ in range(50)
        ]
        # 150 connections held open, and the server still answers.
        assert httpx.get(f"{server.base}/api/queues", timeout=HANG).status_code == 200
        for s in heads:
            answer = until_closed(s)
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
            assert b'"request_timeout"' in answer
        for s in silent:
            assert until_closed(s) == b""  # closed without a word
        for s in bodies:
            answer = until_closed(s)
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
            assert b"did not arrive within 1 s" in answer
        # Nothing half-sent was submitted.
        assert httpx.get(f"{server.base}/api/tasks").json()["total"] == 0


def test_idle_keep_alive_and_oversized_heads_are_closed(dsn):
    env = {"api_keep_alive_timeout": "1", "api_max_header_bytes": "4096"}
    with serve(dsn, **env) as server:
        s = connect(server, b"GET /api/queues HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = until_closed(s)  # one answer, then the idle connection is closed
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.count(b"HTTP/1.1") == 1
        # A head still growing past the limit (h11 bounds what it buffers of an unfinished
        # event; a head that arrives whole in one read is parsed as it is).
        big = b"GET /api/queues HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 8192
        answer = until_closed(connect(server, big))
        assert answer.startswith(b"HTTP/1.1 400 ") and b'"bad_request"' in answer, answer[:300]
        # A body over the limit, sent without a token: 413 and closed, the rest unread.
        head = (
            b"POST /api/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 83000000\r\n\r\n"
        )
        s = connect(server, head + b"[" * 65536)
        answer = until_closed(s)
        assert answer.startswith(b"HTTP/1.1 413 ") and b'"too_large"' in answer


def test_a_response_before_the_body_closes_the_connection(dsn):
    """A 401 sent before the body was read: the slow client cannot keep the connection by
    trickling the rest (each byte used to put off the keep-alive timeout)."""
    with serve(dsn, api_token="t0k3n", api_body_timeout="600") as server:
        s = connect(
            server,
            b"POST /api/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{",
        )
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 401 "), first[:200]
        with contextlib.suppress(OSError):  # the server may close before the bytes land
            for _ in range(3):
                s.sendall(b" ")
                time.sleep(0.2)
        assert until_closed(s).count(b"HTTP/1.1") == 0


def test_event_streams_never_take_the_connections_requests_need(dsn):
    """The API's and the dashboard's streams share one cap, below the pool (10) less two,
    whatever PGTASKS_API_MAX_STREAMS says: the 9th stream is a 503 and every other
    endpoint still answers."""
    import asyncio

    async def pending() -> int:
        async with Client(dsn) as c:
            return int(await c.submit("noop", {}))

    task_id = asyncio.run(pending())  # no worker: it stays PENDING, its streams stay open
    stream = f"/api/tasks/{task_id}/events"
    with serve(dsn, api_max_streams="50") as server:
        http = httpx.Client(base_url=server.base, timeout=HANG)
        with contextlib.ExitStack() as held:
            paths = [stream] * 6 + [f"/stream/tasks/{task_id}"] * 4 + [stream] * 2
            answers, readers = [], []
            for path in [*paths, "/stream/overview"]:
                r = held.enter_context(http.stream("GET", path))
                if r.status_code == 200:
                    # Kept: a line iterator that is dropped closes its response.
                    readers.append(r.iter_lines())
                    assert next(readers[-1]).startswith("event: ")
                else:
                    assert r.read() and r.json()["error"]["code"] == "too_many_streams"
                answers.append(r.status_code)
            assert answers == [200] * 8 + [503] * 5, answers
            assert http.get(f"/api/tasks/{task_id}").status_code == 200
            assert http.get("/api/queues").status_code == 200
            assert http.get("/").status_code == 200
        # Closed streams give their slots back (a condition, polled: the clean-up is async).
        deadline = time.monotonic() + HANG
        while True:
            with contextlib.ExitStack() as again:
                got = [again.enter_context(http.stream("GET", stream)) for _ in range(8)]
                if all(r.status_code == 200 for r in got):
                    break
            assert time.monotonic() < deadline, "the slots never came back"
            time.sleep(0.2)
        http.close()
