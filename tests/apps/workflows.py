"""Task types for the workflow tests (tests/test_workflows.py). Every run is recorded in
test_runs, so tests count runs as the database saw them."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel

from pgtasks import BaseTask, ParentFailure, PermanentError, task_register
from pgtasks.context import SyncTaskContext, TaskContext
from tests.apps.basic import record


@task_register("wf.add")
async def add(ctx: TaskContext, params: dict[str, Any]) -> int:
    """Its parent's result (0 without one) plus params["n"]: a chain sums its steps."""
    await record(ctx)
    parents = await ctx.parent_results
    before = await ctx.parent_result if parents else 0
    return int(before) + int(params.get("n", 1))


@task_register("wf.sync_add")
def sync_add(ctx: SyncTaskContext, params: dict[str, Any]) -> int:
    """wf.add from a thread: the blocking context reads the parent the same way."""
    before = ctx.parent_result if ctx.parent_results else 0
    return int(before) + int(params.get("n", 1))


@task_register("wf.item")
async def item(ctx: TaskContext, params: dict[str, Any]) -> int:
    await record(ctx)
    await asyncio.sleep(float(params.get("sleep", 0)))
    return int(params["i"])


@task_register("wf.collect")
async def collect(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    """A chord callback: what it saw of its parents."""
    await record(ctx)
    parents = await ctx.parent_results
    ok = sorted(v for v in parents.values() if not isinstance(v, ParentFailure))
    failed = sorted(p.task_id for p in parents.values() if isinstance(p, ParentFailure))
    return {"n": len(parents), "results": ok, "failed": failed}


@task_register("wf.fail", max_retries=0)
async def fail(ctx: TaskContext, params: dict[str, Any]) -> None:
    await record(ctx)
    raise PermanentError(params.get("message", "step failed"))


@task_register("wf.sleep")
async def sleep(ctx: TaskContext, params: dict[str, Any]) -> str:
    await record(ctx)
    await asyncio.sleep(float(params.get("s", 30)))
    return "slept"


@task_register("wf.node")
async def node(ctx: TaskContext, params: dict[str, Any]) -> int:
    """A node of the random DAG: quick, recorded."""
    await record(ctx)
    return ctx.task_id


class ScaleParams(BaseModel):
    factor: int


@task_register("wf.scale")
class Scale(BaseTask):
    """A class-based node (`Scale.s({"factor": 10})`): its one parent's result times factor,
    with params validated into the model."""

    async def execute(self, ctx: TaskContext, params: ScaleParams) -> int:
        await record(ctx)
        return int(await ctx.parent_result) * params.factor


@task_register("wf.progress")
async def progress(ctx: TaskContext, params: dict[str, Any]) -> str:
    """Reports progress current/total, then runs until cancelled (or params["s"] passed)."""
    await record(ctx)
    await ctx.progress(int(params["current"]), int(params["total"]), "halfway there")
    await ctx.flush()
    await asyncio.sleep(float(params.get("s", 60)))
    return "progressed"
