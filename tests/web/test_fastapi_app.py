"""examples/fastapi_app.py run by uvicorn in real subprocesses: submit over HTTP, progress
over SSE, cancel, and SIGTERM mid-task hands it back to a second instance that finishes it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # uvicorn subprocesses


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class App:
    def __init__(self, dsn: str, **env: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "examples.fastapi_app:app",
             "--port", str(self.port), "--timeout-graceful-shutdown", "3"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={**os.environ, "PGTASKS_DATABASE_URL": dsn, **env},
        )  # fmt: skip
        self.http = httpx.Client(base_url=self.base, timeout=30)
        deadline = time.monotonic() + 60  # bounds a hung start, not a speed check
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(self.proc.stderr.read().decode() if self.proc.stderr else "")
            try:
                if self.http.get("/openapi.json").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "app did not start"
            time.sleep(0.1)

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def apps(dsn: str) -> Iterator[list[App]]:
    started: list[App] = []
    yield started
    for a in started:
        a.stop()


def wait_status(app: App, task_id: int, want: set[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = app.http.get(f"/reports/{task_id}").json()
        if info["status"] in want or time.monotonic() > deadline:
            return info
        time.sleep(0.1)


def test_submit_stream_progress_and_cancel(dsn, apps):
    app = App(dsn)
    apps.append(app)
    r = app.http.post("/reports", json={"sections": 3, "seconds_per_section": 0.2})
    assert r.status_code == 201
    task_id = r.json()["task_id"]
    events = []
    with app.http.stream("GET", f"/reports/{task_id}/events") as stream:
        event = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                events.append((event, json.loads(line[6:])))
    assert events[-1][0] == "end" and events[-1][1]["status"] == "DONE"
    assert events[-1][1]["result"] == {"sections": 3, "total": 14}
    seen = [d["progress_current"] for e, d in events if e in ("status", "progress")]
    seen = [p for p in seen if p is not None]
    assert seen == sorted(seen) and seen[-1] == 3
    assert [d["message"] for e, d in events if e == "log"] == [
        f"section {n} done" for n in (1, 2, 3)
    ]
    assert app.http.get(f"/reports/{task_id}").json()["status"] == "DONE"
    assert app.http.get(f"/api/admin/tasks/{task_id}").json()["steps"] == [
        "section-1", "section-2", "section-3",
    ]  # fmt: skip

    long = app.http.post("/reports", json={"sections": 100, "seconds_per_section": 0.2})
    long_id = long.json()["task_id"]
    assert app.http.post(f"/reports/{long_id}/cancel").json()["previous_status"] in (
        "PENDING", "RUNNING",
    )  # fmt: skip
    assert wait_status(app, long_id, {"CANCELLED"})["status"] == "CANCELLED"


def test_sigterm_hands_the_task_back_and_a_second_instance_finishes_it(dsn, apps):
    first = App(dsn, REPORT_GRACE="0.2")
    apps.append(first)
    r = first.http.post("/reports", json={"sections": 6, "seconds_per_section": 0.3})
    task_id = r.json()["task_id"]
    deadline = time.monotonic() + 60
    while (first.http.get(f"/reports/{task_id}").json()["progress_current"] or 0) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first.proc.send_signal(signal.SIGTERM)
    # uvicorn re-raises the signal after its graceful shutdown (lifespan included) is done.
    assert first.proc.wait(30) in (0, -signal.SIGTERM)
    second = App(dsn)
    apps.append(second)
    handed = second.http.get(f"/api/admin/tasks/{task_id}/history").json()
    assert [h["to_status"] for h in handed][1:3] == ["RUNNING", "COMMIT"]
    info = wait_status(second, task_id, {"DONE", "FAILED", "CANCELLED"})
    assert info["status"] == "DONE" and info["result"] == {"sections": 6, "total": 91}
    assert info["attempt"] == 2


def test_sse_clients_that_go_away_give_their_connection_back(dsn, apps):
    app = App(dsn, REPORT_CONCURRENCY="1")
    apps.append(app)
    task_id = app.http.post("/reports", json={"sections": 100, "seconds_per_section": 1}).json()[
        "task_id"
    ]
    for _ in range(12):  # more than the API pool's 10 connections
        with app.http.stream("GET", f"/reports/{task_id}/events") as stream:
            assert next(stream.iter_lines()) == "event: status"
    waiters = f"/api/admin/tasks/{task_id}"
    assert app.http.get(waiters, timeout=10).status_code == 200
    import asyncio

    import asyncpg

    async def watchers() -> int:
        c = await asyncpg.connect(dsn)
        try:
            for _ in range(100):
                n = await c.fetchval("SELECT count(*) FROM pgtasks.task_waiters")
                if n == 0:
                    return 0
                await asyncio.sleep(0.1)
            return n
        finally:
            await c.close()

    assert asyncio.run(watchers()) == 0
    app.http.post(f"/reports/{task_id}/cancel")


def test_event_streams_are_capped_and_their_slots_come_back(dsn, apps):
    app = App(dsn, PGTASKS_API_MAX_STREAMS="1")
    apps.append(app)
    task_id = app.http.post("/reports", json={"sections": 100, "seconds_per_section": 1}).json()[
        "task_id"
    ]
    path = f"/api/admin/tasks/{task_id}/events"
    with app.http.stream("GET", path) as held:
        assert next(held.iter_lines()) == "event: status"
        # The held stream takes its slot as its generator starts, which may be just after
        # its first line reached us: wait for the cap to show, bounded.
        deadline = time.monotonic() + 30
        while (r := app.http.get(path)).status_code != 503:
            assert time.monotonic() < deadline, "a second stream was never refused"
            time.sleep(0.1)
        assert r.json()["error"]["code"] == "too_many_streams"
        assert app.http.get(f"/api/admin/tasks/{task_id}").status_code == 200
    deadline = time.monotonic() + 30
    while True:
        with app.http.stream("GET", path) as again:
            if again.status_code == 200:
                assert next(again.iter_lines()) == "event: status"
                break
        assert time.monotonic() < deadline, "the slot never came back"
        time.sleep(0.1)
    app.http.post(f"/reports/{task_id}/cancel")
