"""A worker's connection count does not grow with its concurrency.

200 tasks at once that checkpoint, log and report progress: the worker holds at most its
four pooled connections plus the LISTEN one (counted by the server, in pg_stat_activity, by
the worker's application_name), and tasks that never touch ctx.pool open none for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from pgtasks import Client, Registry, Worker, db, task_register
from tests.conftest import wait_for

REG = Registry()
COUNT = """SELECT count(*) FILTER (WHERE application_name = $1) AS worker,
                  count(*) FILTER (WHERE application_name = $2) AS tasks
             FROM pg_stat_activity"""
TASKS = 400


@task_register("busy", into=REG)
async def busy(ctx: Any, params: dict[str, Any]) -> int:
    first = await ctx.step("first", lambda: params["i"])
    await ctx.log("INFO", f"step done: {first}")
    await ctx.progress(1, 2, "half way")
    await asyncio.sleep(0.2)  # all 200 slots are busy at once
    await ctx.step("second", lambda: first + 1)
    await ctx.progress(2, 2)
    return int(first)


@pytest.mark.slow
async def test_connections_stay_bounded_at_concurrency_200(dsn, conn):
    w = Worker(dsn, registry=REG, concurrency=200, poll_interval=0.1)
    seen: list[tuple[int, int]] = []

    async def sample() -> None:
        watcher = await db.connect(dsn)  # its own session: `conn` is busy waiting below
        try:
            while True:
                row = await watcher.fetchrow(
                    COUNT, w.application_name, f"pgtasks-task:{w.worker_id}"
                )
                seen.append((row["worker"], row["tasks"]))
                await asyncio.sleep(0.01)
        finally:
            await watcher.close()

    async with Client(dsn) as client:
        await client.submit_many("busy", [{"i": i} for i in range(TASKS)])
        run = asyncio.create_task(w.run())
        sampler = asyncio.create_task(sample())
        try:
            await wait_for(conn, "SELECT count(*) = $1 FROM pgtasks.tasks WHERE status = 'DONE'",
                           TASKS)  # fmt: skip
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            w.stop()
            await asyncio.wait_for(run, 60)
    assert w.stats.succeeded == TASKS and seen
    print("connections of the worker, max:", max(n for n, _ in seen))
    assert max(n for n, _ in seen) <= 5, max(seen)
    assert max(n for _, n in seen) == 0  # ctx.pool never used: no connection opened for it
    steps = await conn.fetchval("SELECT count(*) FROM pgtasks.task_steps")
    assert steps == 2 * TASKS
