"""`make run`: start the embedded PostgreSQL, submit some work, run a worker, show the result.

Submits from Python and from plain SQL, runs one worker until the queue is empty (a task
that fails once is retried with backoff; one that always fails ends FAILED), and prints
the tasks as a table.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import demo_tasks
from rich.console import Console

from pgtasks import Client, Worker
from pgtasks.cli import _tasks_table
from pgtasks.config import resolve_url

console = Console()


async def main() -> None:
    console.print("[bold]pgtasks demo[/]: starting the embedded PostgreSQL (first run: initdb)…")
    url = await resolve_url()
    console.print(f"database: {url}")
    async with Client(url) as client:
        ids = [
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
        console.print(f"submitted {len(ids)} tasks; running a worker until the queue is empty…")

        worker = Worker(url, concurrency=4, burst=True, poll_interval=0.2)
        await worker.run()
        s = worker.stats
        console.print(
            f"worker: {s.claimed} claims, {s.succeeded} done, "
            f"{s.retried} retried, {s.failed} failed"
        )
        tasks = [await client.get(i) for i in ids]
        console.print(_tasks_table(tasks, title="tasks"))
        console.print(
            'Look around with psql: [cyan]psql "$(.venv/bin/pgtasks db url)" '
            "-c 'SELECT * FROM pgtasks.task_status'[/]\n"
            "More: [cyan].venv/bin/pgtasks --help[/]; "
            "stop the server: [cyan].venv/bin/pgtasks db stop[/]"
        )


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
