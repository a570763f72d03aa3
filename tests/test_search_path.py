"""Objects planted in schema public never run inside the statements pgtasks sends.

A submitter with CREATE on public (every role's default on PostgreSQL 14 and older) plants
an `=` between two pgtasks.status values and an `array_agg(text)`: closer matches than
pg_catalog's polymorphic ones, so a session with the default search_path resolves them.
Then the superuser lists tasks by status from the CLI, the Client, the HTTP API and the
dashboard, and a worker flushes several tasks' logs in one statement. The plants record
every call in a table of their own; it stays empty because every connection pgtasks opens
pins its search_path (pgtasks.db.SEARCH_PATH) and queries.py names its polymorphic
built-ins with their schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from pgtasks import Client, Registry, SyncClient, Worker, db, task_register
from pgtasks.web import WebSettings, create_app
from pgtasks.worker.notifier import Notifier
from tests.conftest import wait_for
from tests.test_cli import cli

REG = Registry()
TASKS = 6

PLANT = """
CREATE TABLE public.planted_calls (what text NOT NULL, at timestamptz DEFAULT clock_timestamp());
GRANT INSERT ON public.planted_calls TO PUBLIC;
CREATE FUNCTION public.planted_status_eq(a pgtasks.status, b pgtasks.status) RETURNS boolean
  LANGUAGE plpgsql AS
  $$ BEGIN INSERT INTO public.planted_calls (what) VALUES ('='); RETURN a::text = b::text; END $$;
CREATE OPERATOR public.= (LEFTARG = pgtasks.status, RIGHTARG = pgtasks.status,
                          FUNCTION = public.planted_status_eq);
CREATE FUNCTION public.planted_accum(acc text[], x text) RETURNS text[] LANGUAGE plpgsql AS
  $$ BEGIN INSERT INTO public.planted_calls (what) VALUES ('array_agg'); RETURN acc || x; END $$;
CREATE AGGREGATE public.array_agg(text) (SFUNC = public.planted_accum, STYPE = text[],
                                         INITCOND = '{}');
"""


@task_register("planted_logs", into=REG)
async def planted_logs(ctx: Any, params: dict[str, Any]) -> int:
    await ctx.log("INFO", f"line of task {ctx.task_id}")
    return int(params["i"])


@pytest.fixture
async def planted(dsn: str, conn: asyncpg.Connection) -> AsyncIterator[str]:
    """A LOGIN member of pgtasks_submitter with CREATE on public plants its objects there."""
    role = f"planter_{uuid.uuid4().hex[:8]}"
    await conn.execute(f"CREATE ROLE {role} LOGIN; GRANT pgtasks_submitter TO {role}")
    await conn.execute(f"GRANT CREATE ON SCHEMA public TO {role}")
    planter = await asyncpg.connect(dsn, user=role)
    try:
        await planter.execute(PLANT)
    finally:
        await planter.close()
    # The plants are live: a session with the default search_path (this test's own) runs
    # them, so the emptiness asserted at the end means something.
    await conn.fetchval("SELECT 'DONE'::pgtasks.status = 'DONE'::pgtasks.status")
    await conn.fetchval("SELECT array_agg(x) FROM (VALUES ('a'::text)) v(x)")
    assert await calls(conn) == ["=", "array_agg"]
    await conn.execute("DELETE FROM public.planted_calls")
    yield role
    await conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


async def calls(conn: asyncpg.Connection) -> list[str]:
    """Which plants ran (read with the plain, qualified `=` of a text column)."""
    rows = await conn.fetch("SELECT DISTINCT what FROM public.planted_calls ORDER BY what")
    return [r["what"] for r in rows]


async def search_path(executor: asyncpg.Connection | asyncpg.Pool) -> str:
    return str(await executor.fetchval("SHOW search_path"))


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.ready.wait(), 60)
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 60)


async def test_planted_operator_and_aggregate_never_run(dsn, conn, planted):
    async with Client(dsn) as client:
        ids = await client.submit_many("planted_logs", [{"i": i} for i in range(TASKS)])
        worker = Worker(dsn, registry=REG, concurrency=TASKS, poll_interval=0.1)
        async with running(worker):
            await wait_for(
                conn,
                "SELECT count(*) = $1 FROM pgtasks.tasks WHERE status::text = 'DONE'",
                TASKS,
            )
            for name in ("core", "control", "writes"):
                assert await search_path(worker._pool(name)) == db.SEARCH_PATH, name
            # The tasks' own pool keeps the database's path: it runs their SQL, not ours.
            assert await search_path(worker.pool) != db.SEARCH_PATH
            assert worker._writer is not None
            statements = worker._writer.log_writes.statements
        # The log lines of several tasks went out together (LOG_MANY_TASKS, array_agg).
        assert 0 < statements < TASKS, statements
        lines = await conn.fetchval(
            "SELECT count(*) FROM pgtasks.task_log_lines WHERE task_id = ANY($1)", ids
        )
        assert lines == TASKS

        # The Client's listing and browse by status, and the dashboard's reads.
        assert await search_path(client.pool) == db.SEARCH_PATH
        page = await client.page(status="DONE")
        assert page.total == TASKS
        browsed = await client.browse(status="DONE")
        assert sorted(r["id"] for r in browsed) == sorted(ids)
        await client.queue_cards()
        await client.throughput(60)

    # The CLI, as a real process.
    out = cli(dsn, "ls", "--status", "DONE")
    assert out.returncode == 0, out.stderr
    assert all(f"│ {i} " in out.stdout for i in ids), out.stdout

    # The HTTP API and the dashboard, through the app's own lifespan (its own Client).
    app = create_app(WebSettings(database_url=dsn))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            r = await http.get("/api/tasks", params={"status": "DONE"})
            assert r.status_code == 200 and r.json()["total"] == TASKS, r.text
            r = await http.get("/tasks", params={"status": "DONE"})
            assert r.status_code == 200, r.text
            assert (await http.get("/")).status_code == 200

    # The other connections pgtasks opens: db.connect, the LISTEN one, the sync client.
    plain = await db.connect(dsn)
    try:
        assert await search_path(plain) == db.SEARCH_PATH
    finally:
        await plain.close()
    notifier = Notifier(dsn, on_wakeup=lambda _q: None, on_cancel=lambda _t, _a: None)
    notifier.start()
    try:
        await asyncio.wait_for(notifier.connected.wait(), 60)
        assert notifier._conn is not None
        assert await search_path(notifier._conn) == db.SEARCH_PATH
    finally:
        await notifier.stop()
    sync_path = await asyncio.to_thread(_sync_client_search_path, dsn)
    assert sync_path == db.SEARCH_PATH

    assert await calls(conn) == []


def _sync_client_search_path(dsn: str) -> str:
    with SyncClient(dsn) as sync:
        return sync._call(search_path(sync._client.pool))
