"""Task types for the flow-control tests (tests/test_flow_control.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from pgtasks import task_register
from pgtasks.context import TaskContext


@task_register("flow_sleep")
async def flow_sleep(ctx: TaskContext, params: dict[str, Any]) -> None:
    await asyncio.sleep(float(params.get("seconds", 0.05)))


# The key comes from the params: one task per customer at a time, whoever submits.
@task_register(
    "per_customer",
    concurrency_key=lambda p: f"customer:{p['customer']}",
    concurrency_limit=1,
    unique=lambda p: p.get("once"),
)
async def per_customer(ctx: TaskContext, params: dict[str, Any]) -> None:
    await asyncio.sleep(0.05)
