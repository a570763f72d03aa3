"""Task types used by the tests. Each run is recorded in a table, so tests can count runs."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import BaseModel

from pgtasks import BaseTask, PermanentError, Retry, task_register
from pgtasks.context import TaskContext

RUNS_DDL = """CREATE TABLE IF NOT EXISTS test_runs (
    task_id bigint, attempt int, pid int, at timestamptz DEFAULT clock_timestamp())"""


async def record(ctx: TaskContext) -> None:
    """One row per run in test_runs (created with the test database's schema)."""
    await ctx.pool.execute(
        "INSERT INTO public.test_runs (task_id, attempt, pid) VALUES ($1, $2, pg_backend_pid())",
        ctx.task_id, ctx.attempt,
    )  # fmt: skip


class AddParams(BaseModel):
    a: int
    b: int


@task_register("add")
class Add(BaseTask):
    async def execute(self, ctx: TaskContext, params: AddParams) -> dict[str, Any]:
        await record(ctx)
        return {"sum": params.a + params.b}


@task_register("noop")
async def noop(ctx: TaskContext, params: dict[str, Any]) -> None:
    return None


@task_register("recorded")
async def recorded(ctx: TaskContext, params: dict[str, Any]) -> int:
    await record(ctx)
    return ctx.task_id


@task_register("sync_add")
def sync_add(ctx: Any, params: AddParams) -> int:
    time.sleep(0.01)
    return params.a + params.b


@task_register("fail", max_retries=2, backoff_base=0.2)
async def fail(ctx: TaskContext, params: dict[str, Any]) -> None:
    await record(ctx)
    raise ValueError(params.get("message", "boom"))


@task_register("fail_once", backoff_base=0.1)
async def fail_once(ctx: TaskContext, params: dict[str, Any]) -> str:
    await record(ctx)
    if ctx.retry_count == 0:
        raise RuntimeError("first attempt fails")
    return "ok"


@task_register("permanent")
async def permanent(ctx: TaskContext, params: dict[str, Any]) -> None:
    raise PermanentError("cannot be fixed by retrying")


@task_register("retry_later")
async def retry_later(ctx: TaskContext, params: dict[str, Any]) -> str:
    await record(ctx)
    if ctx.retry_count == 0:
        raise Retry(delay=params.get("delay", 0.5))
    return "done"


@task_register("sleep")
async def sleep(ctx: TaskContext, params: dict[str, Any]) -> str:
    await record(ctx)
    await asyncio.sleep(params.get("seconds", 1.0))
    return "slept"


@task_register("sync_sleep")
def sync_sleep(ctx: Any, params: dict[str, Any]) -> str:
    deadline = time.monotonic() + params.get("seconds", 1.0)
    while time.monotonic() < deadline and not ctx.cancelled:
        time.sleep(0.02)
    return "cancelled" if ctx.cancelled else "slept"
