"""Task types for the kill, restart, chaos and PgBouncer tests (run by real worker processes).

Every run is recorded in `test_runs` before the task does anything else, so a test can
count how many times a task's code really started, including runs a kill cut short.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from pgtasks import task_register
from pgtasks.context import TaskContext
from tests.apps.basic import record


@task_register("hang_first")
async def hang_first(ctx: TaskContext, params: dict[str, Any]) -> dict[str, int]:
    """The first attempt hangs (until its worker is killed); any later attempt finishes."""
    await record(ctx)
    if ctx.attempt == 1:
        await asyncio.sleep(params.get("seconds", 3600))
    return {"finished_on_attempt": ctx.attempt}


@task_register("chaos")
async def chaos(ctx: TaskContext, params: dict[str, Any]) -> int:
    """A short unit of work whose result the test can check: n * 2."""
    await record(ctx)
    await asyncio.sleep(random.uniform(params.get("lo", 0.0), params.get("hi", 0.0)))
    return int(params["n"]) * 2


@task_register("sync_stubborn")
def sync_stubborn(ctx: Any, params: dict[str, Any]) -> str:
    """A blocking task that never looks at ctx.cancelled: the worker can only abandon it."""
    time.sleep(params.get("seconds", 3600))
    return "finally"
