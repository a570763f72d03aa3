"""Demo task types: a typed task, a sync one, one that fails once, one that always fails."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import BaseModel

from pgtasks import BaseTask, PermanentError, TaskContext, task_register


class ResizeParams(BaseModel):
    url: str
    width: int


@task_register("resize", queue="images")
class Resize(BaseTask):
    """A class-based task with validated params."""

    async def execute(self, ctx: TaskContext, params: ResizeParams) -> dict[str, Any]:
        await asyncio.sleep(0.2)  # pretend to fetch and resize
        return {"url": params.url, "width": params.width, "bytes": params.width * 42}


@task_register("checksum")
def checksum(ctx: Any, params: dict[str, Any]) -> str:
    """A plain def: runs in a worker thread."""
    time.sleep(0.1)
    return format(sum(params["text"].encode()) % 65536, "04x")


@task_register("flaky", backoff_base=0.5)
async def flaky(ctx: TaskContext, params: dict[str, Any]) -> str:
    """Fails its first attempt; the retry (after ~0.5 s backoff) succeeds."""
    if ctx.retry_count == 0:
        raise ConnectionError("upstream timed out (first attempt always does)")
    return f"succeeded on attempt {ctx.attempt}"


@task_register("doomed", max_retries=1, backoff_base=0.3)
async def doomed(ctx: TaskContext, params: dict[str, Any]) -> None:
    """Fails every attempt: ends FAILED with its error history kept."""
    if params.get("permanent"):
        raise PermanentError("bad input; no retry can fix it")
    raise RuntimeError("this task always fails")
