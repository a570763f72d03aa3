"""Lookup by unique key (Client.find, `pgtasks status --unique-key`, GET /api/tasks?unique_key=)
and what the workers run (pgtasks.active_tasks, Client.active, `pgtasks active`,
GET /api/workers/active, the dashboard's workers table), against a real database, a real
worker process and the real CLI and app."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from pgtasks import Client, PgTasksError, SyncClient
from pgtasks.client import ActiveTask
from pgtasks.web import WebSettings, create_app
from pgtasks.web.dashboard.views import WORKER_TASKS_SHOWN, with_tasks
from tests.apps.basic import Add
from tests.conftest import ROOT, wait_for

#: Every column of pgtasks.active_tasks, exactly: the view names its columns one by one, so
#: a column added to pgtasks.tasks (a secret among them) never shows through it.
ACTIVE_COLUMNS = [
    "id", "task_type", "queue", "worker_id", "host", "pid", "worker_alive", "attempt",
    "started_at", "attempt_started_at", "running_for", "progress_current", "progress_total",
    "percent", "progress_message", "lease_expires_at", "deadline",
]  # fmt: skip


def cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGTASKS_DATABASE_URL": dsn, "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "pgtasks.cli", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def api(dsn: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(WebSettings(database_url=dsn))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            yield http


@contextlib.asynccontextmanager
async def reader_url(dsn: str, conn: asyncpg.Connection) -> AsyncIterator[str]:
    """The test database's URL for a fresh login role that is only a pgtasks_reader."""
    name = f"reader_{uuid.uuid4().hex[:8]}"
    await conn.execute(f"CREATE ROLE {name} LOGIN; GRANT pgtasks_reader TO {name}")
    try:
        yield dsn.replace("postgres@", f"{name}@")
    finally:
        await conn.execute(f"DROP OWNED BY {name}; DROP ROLE {name}")


# -- lookup by unique key ------------------------------------------------------------------


async def found(c: Client, unique_key: str, task_type: Any = None) -> int | None:
    """The id Client.find answers, None for none."""
    task = await c.find(unique_key=unique_key, task_type=task_type)
    return None if task is None else task.id


async def test_find_answers_the_newest_task_of_a_key_per_type_or_of_any(dsn):
    async with Client(dsn) as c:
        first = await c.submit("add", {"a": 1, "b": 2}, unique_key="order:1")
        # Keys belong to their type: another type's task with the same key is a task of its own.
        other = await c.submit("noop", unique_key="order:1")
        assert other.created and other != first

        info = await c.find(unique_key="order:1", task_type="add")
        assert info is not None and info.id == first and info.status == "PENDING"
        assert info.unique_key == "order:1" and info.task_type == "add"
        assert await found(c, unique_key="order:1", task_type=Add) == first
        assert await found(c, unique_key="order:1") == other
        assert await c.find(unique_key="order:1", task_type="fail") is None
        assert await c.find(unique_key="order:2") is None
        with pytest.raises(PgTasksError, match="NUL"):
            await c.find(unique_key="order:\x001")

        # Finished tasks are found too; once the key came free, the new task is the answer.
        await c.cancel(first)
        cancelled = await c.find(unique_key="order:1", task_type="add")
        assert cancelled is not None and cancelled.id == first
        assert cancelled.status == "CANCELLED"
        again = await c.submit("add", {"a": 3, "b": 4}, unique_key="order:1")
        assert again.created and again > other
        assert await found(c, unique_key="order:1", task_type="add") == again
        assert await found(c, unique_key="order:1") == again

        # The same tasks as a page: every task of the key, newest first.
        page = await c.page(unique_key="order:1")
        assert page.total == 3 and [t.id for t in page.items] == [again, other, first]
        assert all(t.unique_key == "order:1" for t in page.items)
        typed = await c.page(unique_key="order:1", task_type="add", page_size=1)
        assert typed.total == 2 and [t.id for t in typed.items] == [again]
        assert (await c.page(unique_key="order:1", status="CANCELLED")).total == 1
        # A page without a key now says each task's key as well.
        assert {t.unique_key for t in (await c.page()).items} == {"order:1"}

    # SyncClient has the twin, from a plain thread.
    def blocking() -> tuple[int | None, bool]:
        with SyncClient(dsn) as s:
            hit = s.find(unique_key="order:1", task_type="add")
            return (None if hit is None else hit.id), s.find(unique_key="nope") is None

    assert await asyncio.to_thread(blocking) == (again, True)


async def test_a_reader_finds_by_key_and_a_submitter_cannot(dsn, conn):
    async with Client(dsn) as c:
        tid = await c.submit("add", {"a": 1, "b": 1}, unique_key="k")
    async with reader_url(dsn, conn) as url, Client(url) as r:
        assert await found(r, unique_key="k") == tid
        assert await r.active() == []
    name = f"submitter_{uuid.uuid4().hex[:8]}"
    await conn.execute(f"CREATE ROLE {name} LOGIN; GRANT pgtasks_submitter TO {name}")
    try:
        s = await asyncpg.connect(dsn, user=name)
        try:
            for view in ("task_status", "active_tasks"):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await s.fetch(f"SELECT * FROM pgtasks.{view}")
        finally:
            await s.close()
    finally:
        await conn.execute(f"DROP OWNED BY {name}; DROP ROLE {name}")


@pytest.mark.slow  # runs `pgtasks` processes
async def test_cli_status_by_unique_key(dsn):
    async with Client(dsn) as c:
        tid = await c.submit("add", {"a": 1, "b": 2}, unique_key="invoice:7")
        await c.submit("noop", unique_key="invoice:7")
    out = cli(dsn, "status", "--unique-key", "invoice:7", "--type", "add")
    assert out.returncode == 0, out.stderr
    assert f"task {tid}" in out.stdout and "invoice:7" in out.stdout and "history" in out.stdout

    missing = cli(dsn, "status", "--unique-key", "invoice:8", "--type", "add")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: no task has unique key 'invoice:8' of type 'add'"
    for args in (
        ("status",),
        ("status", str(tid), "--unique-key", "x"),
        ("status", "--type", "add", str(tid)),
    ):
        bad = cli(dsn, *args)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, args


async def test_api_lists_the_tasks_of_a_key(dsn):
    async with Client(dsn) as c:
        first = await c.submit("add", {"a": 1, "b": 2}, unique_key="job-1")
        other = await c.submit("noop", unique_key="job-1")
        await c.submit("add", {"a": 1, "b": 2}, unique_key="job-2")
    async with api(dsn) as http:
        r = await http.get("/api/tasks", params={"unique_key": "job-1"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["total"] == 2 and [t["id"] for t in body["items"]] == [other, first]
        assert {t["unique_key"] for t in body["items"]} == {"job-1"}
        r = await http.get("/api/tasks", params={"unique_key": "job-1", "task_type": "add"})
        assert [t["id"] for t in r.json()["items"]] == [first]
        r = await http.get("/api/tasks", params={"unique_key": "nobody"})
        assert r.json() == {"items": [], "total": 0, "page": 1, "page_size": 50}
        for bad in ("", "x" * 256, "a\x00b"):
            r = await http.get("/api/tasks", params={"unique_key": bad})
            assert r.status_code == 422, (bad, r.text)
            assert r.json()["error"]["code"] == "invalid_request"


# -- what the workers run ------------------------------------------------------------------


async def test_active_tasks_of_a_claim_without_a_registered_worker(dsn, conn):
    """A claim from psql: no registry row, so no host, pid or liveness; a second attempt
    says when it started, while started_at keeps the first one's start."""
    tid = await conn.fetchval(
        "SELECT pgtasks.submit_task('t', queue => 'q1', timeout => interval '1 hour')"
    )
    (claim,) = await conn.fetch("SELECT * FROM pgtasks.claim_tasks('psql-1', max_tasks => 1)")
    await conn.execute(
        "SELECT pgtasks.report_progress($1, $2, 2, 8, 'two of eight')", tid, claim["lease_token"]
    )
    await conn.execute("SELECT pgtasks.yield_task($1, $2, now())", tid, claim["lease_token"])
    await conn.fetch("SELECT * FROM pgtasks.claim_tasks('psql-2', max_tasks => 1)")
    await conn.fetchval("SELECT pgtasks.submit_task('t', queue => 'q2')")  # pending: not active

    stmt = await conn.prepare("SELECT * FROM pgtasks.active_tasks")
    assert [a.name for a in stmt.get_attributes()] == ACTIVE_COLUMNS
    async with Client(dsn) as c:
        (a,) = await c.active()
        assert (a.id, a.worker_id, a.attempt, a.queue) == (tid, "psql-2", 2, "q1")
        assert a.host is None and a.pid is None and a.worker_alive is None
        assert a.attempt_started_at > a.started_at
        first_claim = await conn.fetchval(
            "SELECT at FROM pgtasks.task_history WHERE task_id = $1 AND attempt = 1"
            " AND to_status = 'RUNNING'",
            tid,
        )
        assert a.started_at == first_claim
        assert a.running_for >= timedelta(0)
        assert timedelta(0) < a.lease_left <= timedelta(seconds=60)
        assert a.deadline > a.lease_expires_at - timedelta(seconds=1)
        # The progress of attempt 1 stays until the task reports again.
        assert (a.progress_current, a.progress_total, a.percent) == (2, 8, 25.0)
        assert a.progress_message == "two of eight"
        assert await c.active(queue="q2") == []
        assert [x.id for x in await c.active(worker_id="psql-2")] == [tid]
        assert await c.active(worker_id="psql-1") == []
        await c.cancel(tid)
        assert await c.active() == []


def test_the_dashboard_names_a_workers_first_tasks_and_counts_the_rest():
    now = datetime.now(UTC)

    def running(task_id: int, worker_id: str) -> ActiveTask:
        return ActiveTask(
            id=task_id, task_type="t", queue="q", worker_id=worker_id, attempt=1,
            started_at=now, attempt_started_at=now, running_for=timedelta(seconds=task_id),
            lease_expires_at=now, deadline=now, lease_left=timedelta(0),
        )  # fmt: skip

    active = [running(i, "busy") for i in range(1, 9)] + [running(9, "unregistered")]
    rows = with_tasks([{"worker_id": "busy"}, {"worker_id": "idle"}], active)
    assert [[t["id"] for t in r["tasks"]] for r in rows] == [[1, 2, 3, 4, 5], []]
    assert [r["more"] for r in rows] == [8 - WORKER_TASKS_SHOWN, 0]
    assert rows[0]["tasks"][0]["running_for"] == timedelta(seconds=1)


@pytest.mark.slow  # a worker process, the CLI
async def test_active_shows_what_a_worker_runs_everywhere(dsn, conn, spawn_worker):
    proc = spawn_worker.start("--concurrency", "4", app="tests/apps/workflows.py")
    async with Client(dsn) as c:
        tid = await c.submit("wf.progress", {"current": 3, "total": 10, "s": 120})
        await wait_for(
            conn, "SELECT progress_current = 3 FROM pgtasks.task_status WHERE id = $1", tid
        )
        (worker,) = await c.workers()
        (a,) = await c.active()
        assert (a.id, a.task_type, a.worker_id) == (tid, "wf.progress", worker["worker_id"])
        assert (a.host, a.pid, a.worker_alive) == (worker["host"], proc.pid, True)
        assert (a.attempt, a.progress_current, a.progress_total, a.percent) == (1, 3, 10, 30.0)
        assert a.progress_message == "halfway there"
        assert a.attempt_started_at == a.started_at and a.running_for > timedelta(0)

        out = cli(dsn, "active")
        assert out.returncode == 0, out.stderr
        row = next(line for line in out.stdout.splitlines() if f" {tid} " in line)
        for cell in (
            worker["worker_id"],
            str(proc.pid),
            "wf.progress",
            "30% 3/10",
            "halfway there",
        ):
            assert cell in row, (cell, out.stdout)
        other_queue = cli(dsn, "active", "--queue", "elsewhere")
        assert other_queue.returncode == 0 and f" {tid} " not in other_queue.stdout

        async with api(dsn) as http:
            r = await http.get("/api/workers/active")
            assert r.status_code == 200, r.text
            (item,) = r.json()
            assert list(item) == [*ACTIVE_COLUMNS, "lease_left"]
            assert item["id"] == tid and item["pid"] == proc.pid and item["percent"] == 30.0
            assert isinstance(item["running_for"], float) and item["running_for"] > 0
            assert isinstance(item["lease_left"], float) and item["lease_left"] > 0
            r = await http.get("/api/workers/active", params={"worker_id": "someone-else"})
            assert r.json() == []
            for params in ({"limit": 0}, {"queue": ""}, {"worker_id": "a\x00b"}):
                r = await http.get("/api/workers/active", params=params)
                assert r.status_code == 422, (params, r.text)

            # The dashboard's workers table names what each worker runs.
            html = (await http.get("/")).text
            row = next(tr for tr in html.split("<tr>") if worker["worker_id"] in tr)
            assert f"#{tid} wf.progress" in row and "30%" in row
            assert re.search(rf'href="[^"]*/tasks/{tid}"', row), row

        await c.cancel(tid)
        await wait_for(conn, "SELECT count(*) = 0 FROM pgtasks.active_tasks")
        assert await c.active() == []
