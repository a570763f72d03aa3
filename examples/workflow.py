"""A chain, a chord and a failure, resolved by the database (docs/workflows.md).

    .venv/bin/pgtasks db start                 # once: a private PostgreSQL in .pgtasks/
    .venv/bin/python examples/workflow.py      # it, or the server of $PGTASKS_DATABASE_URL

Submits `chain(extract, transform, load)` and `chord([count(i) ...], total)`, runs one
worker in this process until both ended, prints their results and one workflow's tree;
then a chord whose callback runs on the partial results of a failed member.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pgtasks import (
    Client,
    ParentFailure,
    PermanentError,
    TaskContext,
    Worker,
    chain,
    chord,
    task_register,
)
from pgtasks.cli import console, workflow_tree
from pgtasks.config import resolve_url


@task_register("etl.extract")
async def extract(ctx: TaskContext, params: dict[str, Any]) -> list[int]:
    return list(range(params["n"]))


@task_register("etl.transform")
async def transform(ctx: TaskContext, params: dict[str, Any]) -> list[int]:
    rows = await ctx.parent_result  # what extract returned
    return [r * r for r in rows]


@task_register("etl.load")
async def load(ctx: TaskContext, params: dict[str, Any]) -> dict[str, int]:
    rows = await ctx.parent_result
    return {"rows": len(rows), "sum": sum(rows)}


@task_register("etl.count", max_retries=0)
async def count(ctx: TaskContext, params: dict[str, Any]) -> int:
    if params.get("fail"):
        raise PermanentError("this shard is broken")
    return int(params["i"]) * 10


@task_register("etl.total")
async def total(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    parents = await ctx.parent_results  # {task id: result or ParentFailure}
    ok = [v for v in parents.values() if not isinstance(v, ParentFailure)]
    failed = [p.node for p in parents.values() if isinstance(p, ParentFailure)]
    return {"total": sum(ok), "failed": failed}


async def main() -> None:
    url = await resolve_url()
    async with Client(url) as client:
        etl = await client.submit(chain(extract.s({"n": 5}), transform.s(), load.s()))
        shards = await client.submit(chord([count.s({"i": i}) for i in range(4)], total.s()))
        partial = await client.submit(
            chord(
                [count.s({"i": 1}), count.s({"i": 2, "fail": True}, name="broken")],
                total.s(on_parent_failure="run"),
            )
        )
        worker = Worker(url, concurrency=8, poll_interval=0.2)
        running = asyncio.create_task(worker.run())
        try:
            console.print("chain:", await client.wait_workflow(etl, timeout=60))
            console.print("chord:", await client.wait_workflow(shards, timeout=60))
            console.print("partial chord:", await client.wait_workflow(partial, timeout=60))
            console.print(workflow_tree(await client.workflow(partial)))
        finally:
            worker.stop()
            await running


if __name__ == "__main__":
    asyncio.run(main())
