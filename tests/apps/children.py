"""Task types for tests/test_children.py: parents that spawn children and wait for them.

Parents run on queue "parents", children on queue "kids", so a test can kill the parents'
worker without touching a running child. Each run of a body is counted in a table of the
test database (CHILDREN_DDL), with the task, its attempt and the worker's pid, so a test
proves from the database alone how often each child ran. Loaded in-process by the tests
and as `--app tests/apps/children.py` by worker subprocesses.
"""

from __future__ import annotations

import os
from typing import Any

import asyncpg

from pgtasks import ChildFailure, PermanentError, task_register
from pgtasks.context import SyncTaskContext, TaskContext

CHILDREN_DDL = """
CREATE TABLE IF NOT EXISTS child_runs (
    task_id bigint, label text, attempt int, pid int, at timestamptz DEFAULT clock_timestamp());
"""


async def _mark(pool: asyncpg.Pool, ctx: TaskContext, label: str) -> None:
    await pool.execute(
        "INSERT INTO child_runs (task_id, label, attempt, pid) VALUES ($1, $2, $3, $4)",
        ctx.task_id,
        label,
        ctx.attempt,
        os.getpid(),
    )


def _outcome(value: Any) -> Any:
    if isinstance(value, ChildFailure):
        return {"failed": value.status, "error": value.error, "id": value.task_id}
    return value


@task_register("square", queue="kids", max_retries=0)
async def square(ctx: TaskContext, params: dict[str, Any]) -> dict[str, int]:
    await _mark(ctx.pool, ctx, "child")
    if params.get("fail"):
        raise PermanentError(f"child {params['i']} refused")
    i = int(params["i"])
    return {"i": i, "sq": i * i}


@task_register("fan_out", queue="parents", max_retries=5)
async def fan_out(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    await _mark(ctx.pool, ctx, "body")
    fail = set(params.get("fail", []))
    ids = await ctx.spawn([square.s({"i": i, "fail": i in fail}) for i in range(params["n"])])
    await _mark(ctx.pool, ctx, "spawned")
    results = await ctx.wait_for_children()
    await _mark(ctx.pool, ctx, "resumed")
    return {
        "ids": ids,
        "results": [_outcome(r) for r in results],
        "attempt": ctx.attempt,
        "pid": os.getpid(),
    }


@task_register("sync_fan_out", queue="parents", max_retries=5)
def sync_fan_out(ctx: SyncTaskContext, params: dict[str, Any]) -> dict[str, Any]:
    ids = ctx.spawn([square.s({"i": i}) for i in range(params["n"])], name="squares")
    results = ctx.wait_for_children()
    return {"ids": ids, "results": [_outcome(r) for r in results], "attempt": ctx.attempt}
