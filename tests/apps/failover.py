"""The task type of the failover test (tests/test_failover.py), run by real worker processes.

Each attempt writes what a real task writes: log lines, progress, a checkpoint (`ctx.step`)
and a row of its own (`ha_effects`, in its own transaction). Its start, its step's run and
its return are also appended to a journal file of the worker process
($PGTASKS_HA_JOURNAL/<pid>), outside the database, so the test knows exactly which
attempts' code ran and which returned, whatever the failover did to the database's answers.
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path
from typing import Any

from pgtasks import task_register
from pgtasks.context import TaskContext

EFFECTS_DDL = """CREATE TABLE IF NOT EXISTS public.ha_effects (
    task_id bigint NOT NULL, attempt int NOT NULL, at timestamptz DEFAULT clock_timestamp())"""


def journal(event: str, ctx: TaskContext) -> None:
    folder = os.environ.get("PGTASKS_HA_JOURNAL")
    if folder:
        # One small append per line to a file only this process writes: lines stay whole.
        with open(Path(folder) / str(os.getpid()), "a") as fh:
            fh.write(f"{event} {ctx.task_id} {ctx.attempt}\n")


@task_register("ha", max_retries=20, backoff_base=0.2)
async def ha(ctx: TaskContext, params: dict[str, Any]) -> int:
    """n * 2, after a log line, progress, a checkpoint and a row of its own."""
    journal("start", ctx)
    n = int(params["n"])
    await ctx.log("INFO", f"task {n}: attempt {ctx.attempt} starts")
    await ctx.progress(0, 2, "computing")

    async def double() -> int:
        journal("step", ctx)  # the step's code ran: a later attempt must not run it again
        return n * 2

    doubled = await ctx.step("double", double)
    await asyncio.sleep(random.uniform(params.get("lo", 0.0), params.get("hi", 0.0)))
    await ctx.progress(1, 2, "recording")
    await ctx.pool.execute(
        "INSERT INTO public.ha_effects (task_id, attempt) VALUES ($1, $2)", ctx.task_id, ctx.attempt
    )
    await ctx.progress(2, 2, "done")
    await ctx.log("INFO", f"task {n}: done")
    journal("return", ctx)
    return doubled
