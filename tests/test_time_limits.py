"""Soft time limits: the database computes each attempt's soft deadline at claim; the
worker raises SoftTimeLimitExceeded inside the task when it passes (an async task at its
next await, a sync one at its next ctx call), the task's cleanup runs, and the hard limit
still ends an attempt that ignores the soft one.

Results and errors are read from the database; timeouts only bound a hung test.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from pgtasks import Client, SoftTimeLimitExceeded, TaskFailed, Worker, registry, task_register
from pgtasks.errors import InvalidArgument
from tests.sql.helpers import raises

StartWorker = Callable[..., Awaitable[Worker]]

if "soft_async" not in registry:

    @task_register("soft_async", soft_timeout=1, timeout=60, max_retries=0)
    async def soft_async(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
        try:
            await asyncio.sleep(3600)
        except SoftTimeLimitExceeded:
            await asyncio.sleep(0.01)  # cleanup may await: the task was not cancelled
            await ctx.log("info", "cleaning up")
            return {"cleaned": True, "passed": ctx.soft_deadline_passed}
        return {"cleaned": False}

    @task_register("soft_sync", soft_timeout=1, timeout=60, max_retries=0)
    def soft_sync(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
        calls = 0
        try:
            while True:
                time.sleep(0.02)
                calls += 1
                ctx.progress(calls, None)  # raises at the first call after the soft limit
        except SoftTimeLimitExceeded:
            passed = ctx.soft_deadline_passed
            ctx.log("info", "cleaning up")  # raised once: cleanup may use ctx
            return {"cleaned": True, "passed": passed}

    @task_register("soft_ignored", soft_timeout=1, timeout=3, max_retries=0)
    async def soft_ignored(ctx: Any, params: dict[str, Any]) -> None:
        try:
            await asyncio.sleep(3600)
        except SoftTimeLimitExceeded:
            await asyncio.sleep(3600)  # ignores it: the hard limit ends the attempt


@pytest.fixture
async def client(dsn: str) -> AsyncIterator[Client]:
    async with Client(dsn) as c:
        yield c


@pytest.fixture
async def start_worker(dsn: str) -> AsyncIterator[StartWorker]:
    started: list[tuple[Worker, asyncio.Task[None]]] = []

    async def start(**kw: Any) -> Worker:
        opts: dict[str, Any] = {"poll_interval": 0.1, "lease": 10.0, "shutdown_grace": 2.0}
        w = Worker(dsn, **(opts | kw))
        started.append((w, asyncio.create_task(w.run())))
        return w

    yield start
    for w, _ in started:
        w.stop()
    for _, t in started:
        await asyncio.wait_for(t, 30)


@pytest.mark.parametrize("task_type", ["soft_async", "soft_sync"])
async def test_the_soft_limit_raises_inside_the_task_and_its_cleanup_runs(
    conn: asyncpg.Connection, client: Client, start_worker: StartWorker, task_type: str
) -> None:
    task_id = await client.submit(task_type)
    await start_worker(concurrency=2)
    assert await client.wait(task_id, timeout=60) == {"cleaned": True, "passed": True}
    logs = await conn.fetch("SELECT message FROM pgtasks.task_logs WHERE task_id = $1", task_id)
    assert [r[0] for r in logs] == ["cleaning up"]
    # The attempt ran past its soft limit and well before its hard one.
    row = await conn.fetchrow(
        "SELECT finished_at - started_at AS ran, timeout, soft_timeout FROM pgtasks.tasks"
        " WHERE id = $1",
        task_id,
    )
    assert row["soft_timeout"] == timedelta(seconds=1)
    assert timedelta(seconds=1) <= row["ran"] < row["timeout"]


async def test_a_task_that_ignores_the_soft_limit_is_still_stopped_by_the_hard_one(
    client: Client, start_worker: StartWorker
) -> None:
    task_id = await client.submit("soft_ignored")
    await start_worker()
    with pytest.raises(TaskFailed, match="timed out"):
        await client.wait(task_id, timeout=60)


async def test_the_claim_returns_the_soft_deadline_from_submit_or_type(
    conn: asyncpg.Connection,
) -> None:
    await conn.execute(
        "SELECT pgtasks.register_task_type('typed', timeout => '1 hour',"
        " soft_timeout => '55 minutes')"
    )
    typed = await conn.fetchval("SELECT pgtasks.submit_task('typed')")
    given = await conn.fetchval("SELECT pgtasks.submit_task('typed', soft_timeout => '10 minutes')")
    plain = await conn.fetchval("SELECT pgtasks.submit_task('plain')")
    batch = await conn.fetchval(
        "SELECT array_agg(id) FROM pgtasks.submit_tasks('plain', ARRAY['{}'::jsonb],"
        " soft_timeout => '1 minute') AS s(id)"
    )
    async with conn.transaction():  # now() stands still: deadlines are exact
        rows = {
            r["id"]: r
            for r in await conn.fetch(
                "SELECT *, now() AS at FROM pgtasks.claim_tasks('w', max_tasks => 10)"
            )
        }
    soft = {i: r["soft_deadline"] and r["soft_deadline"] - r["at"] for i, r in rows.items()}
    assert soft == {
        typed: timedelta(minutes=55),
        given: timedelta(minutes=10),
        plain: None,
        batch[0]: timedelta(minutes=1),
    }
    assert all(r["deadline"] - r["at"] == r["timeout"] for r in rows.values())
    typed_row = await conn.fetchrow(
        "SELECT soft_timeout FROM pgtasks.registered_types WHERE task_type = 'typed'"
    )
    assert typed_row["soft_timeout"] == timedelta(minutes=55)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT pgtasks.submit_task('t', timeout => '1 minute', soft_timeout => '1 minute')",
        "SELECT pgtasks.submit_task('t', timeout => '1 minute', soft_timeout => '2 minutes')",
        "SELECT pgtasks.submit_task('t', soft_timeout => '-1 second')",
        "SELECT pgtasks.submit_or_get('t', timeout => '1 minute', soft_timeout => '1 hour')",
        "SELECT pgtasks.submit_tasks('t', ARRAY['{}'::jsonb], timeout => '1 minute',"
        " soft_timeout => '1 hour')",
        "SELECT pgtasks.register_task_type('t', timeout => '1 minute', soft_timeout => '1 hour')",
        # No timeout policy: checked against settings.default_timeout (4 hours).
        "SELECT pgtasks.register_task_type('t', soft_timeout => '5 hours')",
    ],
)
async def test_a_soft_limit_not_below_the_hard_one_is_refused(
    conn: asyncpg.Connection, sql: str
) -> None:
    await raises(conn, sql, "PT129")
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.tasks") == 0
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.task_types") == 0


async def test_a_type_soft_limit_meets_a_shorter_submitted_timeout(
    conn: asyncpg.Connection, client: Client
) -> None:
    await conn.execute(
        "SELECT pgtasks.register_task_type('typed', timeout => '1 hour',"
        " soft_timeout => '55 minutes')"
    )
    with pytest.raises(InvalidArgument) as info:
        await client.submit("typed", timeout=60)
    assert info.value.sqlstate == "PT129" and info.value.hint
    assert await client.submit("typed", timeout=60, soft_timeout=50)


async def test_workflow_nodes_and_spawned_children_carry_soft_timeout(
    conn: asyncpg.Connection, client: Client
) -> None:
    """A workflow node takes soft_timeout as a plain submit does (its own, else the type's
    declaration, else the registered policy), and so does a spawned child."""
    from pgtasks import chain, task_node
    from pgtasks.workflows import child_spec

    spec = {"nodes": [
        {"name": "a", "type": "plain", "timeout": 60, "soft_timeout": 50},
        {"name": "b", "type": "plain", "soft_timeout": "2 minutes", "after": ["a"]},
        {"name": "c", "type": "soft_async", "after": ["a"]},
        {"name": "d", "type": "plain", "after": ["a"]},
    ]}  # fmt: skip
    out = await conn.fetchval("SELECT pgtasks.submit_workflow($1::text::jsonb)::text",
                              json.dumps(spec))  # fmt: skip
    ids = json.loads(out)["nodes"]
    got = {
        r["id"]: r["soft_timeout"]
        for r in await conn.fetch("SELECT id, soft_timeout FROM pgtasks.tasks")
    }
    assert got[ids["a"]] == timedelta(seconds=50)
    assert got[ids["b"]] == timedelta(minutes=2)
    assert got[ids["c"]] is None  # a type's soft limit reaches SQL once a worker registers it
    assert got[ids["d"]] is None
    for bad in ({"type": "plain", "soft_timeout": "soon"}, {"type": "plain", "soft_timeout": []}):
        await raises(
            conn, "SELECT pgtasks.submit_workflow($1::text::jsonb)", "PT506",
            json.dumps({"nodes": [{"name": "x", **bad}]}),
        )  # fmt: skip
    await raises(
        conn, "SELECT pgtasks.submit_workflow($1::text::jsonb)", "PT129",
        '{"nodes": [{"name": "x", "type": "plain", "timeout": 60, "soft_timeout": 60}]}',
    )  # fmt: skip

    # From Python: the node's option, else the type's @task_register declaration.
    wf = await client.submit(chain(task_node("plain", soft_timeout=30), task_node("soft_async")))
    soft = {
        r["id"]: r["soft_timeout"]
        for r in await conn.fetch(
            "SELECT id, soft_timeout FROM pgtasks.tasks WHERE workflow_id = $1", wf
        )
    }
    assert sorted(soft.values()) == [timedelta(seconds=1), timedelta(seconds=30)]
    assert child_spec(task_node("soft_async"))["soft_timeout"] == 1.0
    assert child_spec(task_node("plain", soft_timeout=5))["soft_timeout"] == 5.0
    assert "soft_timeout" not in child_spec(task_node("plain"))
