"""A task that reports progress and logs as it goes, for the HTTP API tests."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from pgtasks import task_register
from pgtasks.context import TaskContext


class StepsParams(BaseModel):
    steps: int = 3
    pause: float = 0.2


@task_register("web_steps")
async def web_steps(ctx: TaskContext, params: StepsParams) -> dict[str, int]:
    for i in range(1, params.steps + 1):
        await asyncio.sleep(params.pause)
        await ctx.log("INFO", f"step {i}")
        await ctx.progress(i, params.steps, f"step {i} of {params.steps}")
        await ctx.flush()
    return {"steps": params.steps}
