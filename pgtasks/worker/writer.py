"""TaskWriter: what running tasks write (checkpoints, log lines, progress) and read (their
completed steps), on the worker's own small pool.

Every task of a worker shares this pool, so a worker's connection count does not grow with
its concurrency: 200 tasks that checkpoint, log and report progress queue for one or two
connections instead of opening 200. Log lines and progress are already buffered and
coalesced per task by the context (one log batch and one progress write per second at
most), so the queue stays short; a checkpoint is awaited by its task.
Every call is fenced by the attempt and raises LeaseLost once the task is no longer ours.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from pgtasks import queries
from pgtasks.db import translated


class TaskWriter:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def steps(self, task_id: int, attempt: int) -> list[tuple[str, Any, datetime]]:
        async with translated():
            rows = await self.pool.fetch(queries.TASK_STEPS, task_id, attempt)
        return [(r["name"], r["result"], r["db_now"]) for r in rows]

    async def checkpoint(self, task_id: int, attempt: int, name: str, value: Any) -> None:
        async with translated():
            await self.pool.execute(queries.CHECKPOINT, task_id, attempt, name, value)

    async def logs(
        self,
        task_id: int,
        attempt: int,
        lines: list[tuple[str, str, str | None, datetime]],  # level, message, logger, at
    ) -> None:
        async with translated():
            await self.pool.execute(
                queries.LOG_MANY,
                task_id,
                attempt,
                [line[0] for line in lines],
                [line[1] for line in lines],
                [line[3] for line in lines],
                [line[2] for line in lines],
            )

    async def progress(
        self, task_id: int, attempt: int, current: int, total: int | None, message: str | None
    ) -> None:
        async with translated():
            await self.pool.execute(
                queries.REPORT_PROGRESS, task_id, attempt, current, total, message
            )
