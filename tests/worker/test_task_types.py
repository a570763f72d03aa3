"""Task types live in the database: a worker registers its types' policies at start, so a
submit from plain SQL gets the declared queue and retries; a Python submit before any
worker registered the type gets them too (the client passes the declaration); rescue and
fail_task use the task's own backoff base."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from pgtasks import Client, Registry, Worker, task_register
from tests.conftest import wait_for

REG = Registry()


@task_register("resize", into=REG, queue="images", max_retries=5, backoff_base=60, timeout=30)
async def resize(ctx: Any, params: dict[str, Any]) -> str:
    return "resized"


async def test_a_type_declared_in_python_applies_to_a_submit_from_sql(dsn, conn):
    w = Worker(dsn, registry=REG, queues=["images"], poll_interval=0.1)
    run = asyncio.create_task(w.run())
    try:
        await wait_for(conn, "SELECT count(*) = 1 FROM pgtasks.registered_types")
        row = await conn.fetchrow("SELECT * FROM pgtasks.registered_types")
        assert (row["task_type"], row["queue"], row["max_retries"]) == ("resize", "images", 5)
        assert row["backoff_base"] == timedelta(seconds=60)
        assert row["registered_by"] == w.worker_id
        tid = await conn.fetchval("SELECT pgtasks.submit_task('resize')")
        task = await conn.fetchrow("SELECT * FROM pgtasks.tasks WHERE id = $1", tid)
        assert (task["queue"], task["max_retries"]) == ("images", 5)
        assert task["timeout"] == timedelta(seconds=30)
        # ... and the worker that only serves `images` runs it.
        await wait_for(conn, "SELECT status = 'DONE' FROM pgtasks.tasks WHERE id = $1", tid)
    finally:
        w.stop()
        await asyncio.wait_for(run, 30)


async def test_python_submit_before_any_worker_registered_gets_the_declaration(dsn, conn):
    from pgtasks import task as task_module

    task_module.registry.add(REG.specs["resize"])  # the client reads the default registry
    try:
        async with Client(dsn) as client:
            assert await client.types() == []  # nobody registered it yet
            tid = await client.submit("resize")
            explicit = await client.submit("resize", queue="urgent", max_retries=1)
            untyped = await client.submit("never_registered")
        rows = {
            r["id"]: r
            for r in await conn.fetch(
                "SELECT id, queue, max_retries, backoff_base FROM pgtasks.tasks"
            )
        }
        assert (rows[tid]["queue"], rows[tid]["max_retries"]) == ("images", 5)
        assert rows[tid]["backoff_base"] == timedelta(seconds=60)
        assert (rows[explicit]["queue"], rows[explicit]["max_retries"]) == ("urgent", 1)
        # Neither given nor declared: the database's settings decide.
        settings = await conn.fetchrow("SELECT * FROM pgtasks.current_settings()")
        assert rows[untyped]["queue"] == settings["default_queue"]
        assert rows[untyped]["max_retries"] == settings["default_max_retries"]
    finally:
        task_module.registry.specs.pop("resize", None)


async def test_rescue_uses_the_tasks_own_backoff(dsn, conn):
    w = Worker(dsn, registry=REG, poll_interval=0.1)
    run = asyncio.create_task(w.run())
    try:
        await wait_for(conn, "SELECT count(*) = 1 FROM pgtasks.registered_types")
    finally:
        w.stop()
        await asyncio.wait_for(run, 30)
    tid = await conn.fetchval("SELECT pgtasks.submit_task('resize')")
    await conn.fetch(
        "SELECT * FROM pgtasks.claim_tasks('dead', max_tasks => 1, lease => interval '1 minute')"
    )
    await conn.execute("SELECT pgtasks.advance_clock(interval '61 seconds')")
    assert await conn.fetchval("SELECT rescued FROM pgtasks.maintain()") == 1
    wait = await conn.fetchval(
        "SELECT run_at - pgtasks.now() FROM pgtasks.tasks WHERE id = $1", tid
    )
    assert wait > timedelta(seconds=40)  # 60 s +-20 %, not the 1 s default
