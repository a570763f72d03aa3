"""Task types for tests/test_events.py: tasks that wait for events and snooze.

Each body run is counted in a table of the test database (EVENTS_DDL), with its attempt
and the worker's pid, so a test proves from the database alone how often the code ran,
in which attempt and on which worker. Loaded in-process by the tests and as
`--app tests/apps/events.py` by worker subprocesses.
"""

from __future__ import annotations

import os
from typing import Any

import asyncpg

from pgtasks import EventTimeout, Snooze, task_register
from pgtasks.context import SyncTaskContext, TaskContext

EVENTS_DDL = """
CREATE TABLE IF NOT EXISTS event_runs (
    task_id bigint, label text, attempt int, pid int, at timestamptz DEFAULT clock_timestamp());
"""


async def _mark(pool: asyncpg.Pool, ctx: TaskContext, label: str) -> None:
    await pool.execute(
        "INSERT INTO event_runs (task_id, label, attempt, pid) VALUES ($1, $2, $3, $4)",
        ctx.task_id,
        label,
        ctx.attempt,
        os.getpid(),
    )


@task_register("await_approval", max_retries=3)
async def await_approval(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    await _mark(ctx.pool, ctx, "body")

    async def prepare() -> str:
        await _mark(ctx.pool, ctx, "prepare")
        return "prepared"

    await ctx.step("prepare", prepare)
    try:
        payload = await ctx.wait_for_event("approved", timeout=params.get("timeout", 3600))
    except EventTimeout as exc:
        await _mark(ctx.pool, ctx, "timeout")
        return {"timed_out": exc.name, "attempt": ctx.attempt}
    await _mark(ctx.pool, ctx, "resumed")
    return {"payload": payload, "attempt": ctx.attempt, "pid": os.getpid()}


@task_register("sync_await_approval", max_retries=3)
def sync_await_approval(ctx: SyncTaskContext, params: dict[str, Any]) -> dict[str, Any]:
    if params.get("uncaught"):  # an EventTimeout fails the task
        payload = ctx.wait_for_event("approved", timeout=params.get("timeout", 3600))
        return {"payload": payload, "attempt": ctx.attempt}
    try:
        payload = ctx.wait_for_event("approved", timeout=params.get("timeout", 3600))
    except EventTimeout:
        return {"timed_out": True, "attempt": ctx.attempt}
    return {"payload": payload, "attempt": ctx.attempt}


@task_register("event_quick")
async def event_quick(ctx: TaskContext, params: dict[str, Any]) -> str:
    await _mark(ctx.pool, ctx, "quick")
    return "quick"


@task_register("snoozer", max_retries=3)
async def snoozer(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    """Snoozes (without a delay) until its attempt passes `times`: a condition it polls."""
    await _mark(ctx.pool, ctx, "body")
    if ctx.attempt <= params["times"]:
        if ctx.attempt % 2:
            raise Snooze(0)
        await ctx.snooze(0)
    return {"attempt": ctx.attempt, "retries": ctx.retry_count}


@task_register("sync_snoozer", max_retries=3)
def sync_snoozer(ctx: SyncTaskContext, params: dict[str, Any]) -> int:
    if ctx.attempt <= params["times"]:
        ctx.snooze(0)
    return ctx.attempt
