"""Task types for the dashboard's browser tests: web_steps (progress and logs) and one that
fails its first attempt only, so a retry from the dashboard ends DONE."""

from __future__ import annotations

from typing import Any

import tests.apps.web  # noqa: F401  (registers web_steps)
from pgtasks import task_register
from pgtasks.context import TaskContext


@task_register("dash_flaky", max_retries=0)
async def dash_flaky(ctx: TaskContext, params: dict[str, Any]) -> dict[str, int]:
    if ctx.attempt == 1:
        raise ValueError(f"flaky: attempt {ctx.attempt} fails, the next one works")
    return {"attempt": ctx.attempt}


@task_register("dash_quick")
async def dash_quick(ctx: TaskContext, params: dict[str, Any]) -> int:
    return int(params.get("i", 0))
