"""`make run`: submit some work, run a worker, show the result.

The database is PGTASKS_DATABASE_URL's, else the embedded PostgreSQL that `make run` creates
first with `pgtasks db start` (run that yourself before `python examples/demo.py`): no
command, this one included, creates a database without being asked. The demo says which one
it uses.

Submits from Python and from plain SQL, runs one worker until every task has ended (a task
that fails once is retried with backoff; two end FAILED; a three-stage task shows live
progress and, after its last stage fails once, resumes without redoing the first two), and
prints the tasks as a table.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import demo_tasks  # registers the demo's task types
import media_pipeline

from pgtasks import Client, Worker
from pgtasks.cli import _tasks_table, console, watch_progress
from pgtasks.config import ENV_URL, resolve_url
from pgtasks.errors import ConfigurationError


async def main() -> None:
    console.print("[bold]pgtasks demo[/]")
    embedded: list[str] = []
    url = await resolve_url(announce=embedded.append)
    console.print(f"database: {embedded[0] if embedded else f'the server named by {ENV_URL}'}")
    async with Client(url) as client:
        ids: list[int] = [
            await client.submit(
                demo_tasks.Resize, {"url": "https://example.com/cat.png", "width": 640}
            ),
            await client.submit("checksum", {"text": "hello pgtasks"}),
            await client.submit(demo_tasks.flaky),
            await client.submit(demo_tasks.doomed),
            await client.submit(demo_tasks.doomed, {"permanent": True}),
        ]
        ids += await client.submit_many(
            demo_tasks.Resize,
            [{"url": f"https://example.com/{i}.png", "width": 100 * i} for i in range(1, 4)],
        )
        # Any language can submit with plain SQL:
        ids.append(
            await client.pool.fetchval(
                """SELECT pgtasks.submit_task('checksum', '{"text": "from SQL"}', priority => 5)"""
            )
        )
        # A long-running task in three stages, whose last stage fails once: its retry
        # resumes at that stage, the first two are not run again.
        pipeline = await client.submit(
            media_pipeline.media_pipeline,
            media_pipeline.PipelineParams(seconds_per_stage=0.7, fail_stage3_once=True),
        )
        ids.append(pipeline)
        console.print(f"submitted {len(ids)} tasks; running a worker…")

        worker = Worker(url, concurrency=4, poll_interval=0.2)
        running = asyncio.create_task(worker.run())
        try:
            console.print(f"[bold]task {pipeline}[/] (media_pipeline), live:")
            await watch_progress(client, pipeline, lines=4)
            while [t for t in await client.list_tasks(limit=len(ids)) if not t.finished]:
                await asyncio.sleep(0.1)
        finally:
            worker.stop()
            await running
        s = worker.stats
        console.print(
            f"worker: {s.claimed} claims, {s.succeeded} done, "
            f"{s.retried} retried, {s.failed} failed"
        )
        steps = await client.pool.fetch(
            "SELECT name, attempt FROM pgtasks.task_steps WHERE task_id = $1 ORDER BY at", pipeline
        )
        console.print(
            "pipeline stages, each committed once (attempt that ran it): "
            + ", ".join(f"{r['name']} ({r['attempt']})" for r in steps)
        )
        tasks = [await client.get(i) for i in ids]
        console.print(_tasks_table(tasks, title="tasks"))
        console.print(
            'Look around with psql: [cyan]psql "$(.venv/bin/pgtasks db url)" '
            "-c 'SELECT * FROM pgtasks.task_status'[/]\n"
            "More: [cyan].venv/bin/pgtasks --help[/]; "
            "stop the server: [cyan].venv/bin/pgtasks db stop[/]"
        )
        console.print(
            "[bold]See these tasks in the dashboard[/]: run [cyan].venv/bin/pgtasks serve[/] "
            "and open [link=http://127.0.0.1:8000/]http://127.0.0.1:8000/[/link]"
        )


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(main())
    except ConfigurationError as exc:  # no database: one line that says what to do
        sys.exit(f"error: {exc}")
