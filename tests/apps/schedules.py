"""Task types and declared schedules for tests/test_schedules.py (real worker processes)."""

from __future__ import annotations

import asyncio
from typing import Any

import pgtasks
from pgtasks import task_register
from pgtasks.context import TaskContext


@task_register("tick")
async def tick(ctx: TaskContext, params: dict[str, Any]) -> None:
    return None


@task_register("slow")
async def slow(ctx: TaskContext, params: dict[str, Any]) -> None:
    """Longer than its schedule's interval, for the overlap policies."""
    await asyncio.sleep(params.get("seconds", 2.5))


# Declared in code: a worker upserts these when it starts.
@task_register("report", schedule="0 6 * * *", timezone="Europe/Berlin")
async def report(ctx: TaskContext, params: dict[str, Any]) -> None:
    return None


pgtasks.schedule("report-weekly", "report", cron="0 7 * * mon", params={"kind": "weekly"},
                 timezone="Europe/Berlin")  # fmt: skip
pgtasks.schedule("report-monthly", "report", cron="0 7 1 * *", params={"kind": "monthly"})
