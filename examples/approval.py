"""A human approval: the task waits for an event, holding no worker, until someone sends
it from psql or over HTTP (docs/long-running-tasks.md, "Waiting for events").

    .venv/bin/pgtasks db start                  # once: a private PostgreSQL in .pgtasks/
    .venv/bin/python examples/approval.py       # waits for you; prints the psql to send
    .venv/bin/python examples/approval.py --auto   # sends the approval itself after 2 s

The task drafts a report (a checkpointed step), then waits up to an hour for an
"approved" event. Meanwhile its worker slot is free: the example's one-slot worker runs
other tasks. Approve it from psql (an admin role) with

    SELECT pgtasks.send_event(task_id => 42, name => 'approved', payload => '{"by": "ann"}');

or, with `pgtasks serve` running, `curl -X POST localhost:8000/api/tasks/42/events/approved
-H 'content-type: application/json' -d '{"by": "ann"}'`. The task runs again at once,
skips its draft step, and publishes. With no approval within the hour it ends unpublished.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from pgtasks import Client, EventTimeout, TaskContext, Worker, task_register
from pgtasks.cli import console
from pgtasks.config import resolve_url


def draft_report(report_id: int) -> dict[str, Any]:
    return {"report_id": report_id, "title": f"Quarterly report {report_id}"}


@task_register("approval.publish")
async def publish(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    draft = await ctx.step("draft", draft_report, params["report_id"])
    await ctx.log("INFO", f"draft ready: {draft['title']}; waiting for approval")
    try:
        decision = await ctx.wait_for_event("approved", timeout=3600)
    except EventTimeout:
        return {"published": False, "why": "nobody approved it within the hour"}
    return {"published": True, "title": draft["title"], "approved_by": decision["by"]}


@task_register("approval.other")
async def other(ctx: TaskContext, params: dict[str, Any]) -> int:
    return int(params["i"]) * 2


async def main(auto: bool) -> None:
    url = await resolve_url()
    async with Client(url) as client:
        task_id = await client.submit("approval.publish", {"report_id": 7})
        worker = Worker(url, concurrency=1, poll_interval=0.2)
        running = asyncio.create_task(worker.run())
        try:
            others = [await client.submit("approval.other", {"i": i}) for i in range(5)]
            for t in others:  # they run on the one slot while the approval waits
                await client.wait(t, timeout=60)
            console.print(f"task {task_id} waits for its approval; {len(others)} others ran")
            if auto:
                await asyncio.sleep(2)
                await client.send_event(task_id, "approved", {"by": "the example"})
            else:
                console.print(
                    "approve it from psql:\n"
                    f"  SELECT pgtasks.send_event(task_id => {task_id}, name => 'approved', "
                    'payload => \'{"by": "you"}\');'
                )
            console.print("result:", await client.wait(task_id, timeout=3700))
        finally:
            worker.stop()
            await running


if __name__ == "__main__":
    asyncio.run(main("--auto" in sys.argv))
