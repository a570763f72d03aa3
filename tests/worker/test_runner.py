"""Runner alone: one attempt in, one outcome value out; the runner itself writes no SQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pgtasks import PermanentError, Registry, Retry, task_register
from pgtasks.worker.runner import DaemonThreads, Failed, Runner, Succeeded, Yielded
from tests.worker.conftest import attempt, claim, submit

REG = Registry()


@task_register("ok", into=REG)
async def ok(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    await ctx.progress(1, 1)
    return {"id": ctx.task_id}


@task_register("sync_ok", into=REG)
def sync_ok(ctx: Any, params: dict[str, Any]) -> int:
    ctx.log("INFO", "from a thread")
    return 7


@task_register("retry", into=REG)
async def retry(ctx: Any, params: dict[str, Any]) -> None:
    raise Retry(delay=5)


@task_register("permanent", into=REG)
async def permanent(ctx: Any, params: dict[str, Any]) -> None:
    raise PermanentError("no")


@task_register("boom", into=REG)
async def boom(ctx: Any, params: dict[str, Any]) -> None:
    raise ValueError("boom")


@task_register("sleepy", into=REG)
async def sleepy(ctx: Any, params: dict[str, Any]) -> None:
    await ctx.sleep_until(datetime.now(UTC) + timedelta(hours=1))


@task_register("nan", into=REG)
async def nan(ctx: Any, params: dict[str, Any]) -> float:
    return float("nan")


@pytest.mark.parametrize(
    ("task_type", "expected"),
    [
        ("sync_ok", Succeeded("7")),
        ("retry", Failed("Retry: retry requested", None, retryable=True, delay=5)),
    ],
)
async def test_simple_outcomes(conn, pool, task_type, expected):
    await submit(conn, task_type)
    [row] = await claim(conn, 1)
    runner = Runner(DaemonThreads())
    att = attempt(row, pool, is_sync=task_type.startswith("sync"))
    assert await runner.run(att, REG.get(task_type)) == expected


async def test_outcomes_by_kind(conn, pool):
    await submit(conn, "ok")
    for t in ("permanent", "boom", "sleepy", "nan"):
        await submit(conn, t)
    rows = {r["task_type"]: r for r in await claim(conn, 5)}
    runner = Runner(DaemonThreads())

    async def run(t: str) -> Any:
        return await runner.run(attempt(rows[t], pool), REG.get(t))

    done = await run("ok")
    assert isinstance(done, Succeeded) and json.loads(done.result or "") == {"id": rows["ok"]["id"]}
    perm = await run("permanent")
    assert isinstance(perm, Failed) and not perm.retryable and "PermanentError: no" in perm.error
    err = await run("boom")
    assert isinstance(err, Failed) and err.retryable and "ValueError" in (err.traceback or "")
    slept = await run("sleepy")
    assert isinstance(slept, Yielded) and slept.run_at is not None and not slept.handed_back
    bad = await run("nan")  # not JSON: this attempt's error, not a poisoned batch later
    assert isinstance(bad, Failed) and "ValueError" in bad.error
    # Runner wrote nothing; the only writes are the tasks' own (progress, the sleep's step).
    statuses = await conn.fetch("SELECT DISTINCT status::text FROM pgtasks.tasks")
    assert [r[0] for r in statuses] == ["RUNNING"]
