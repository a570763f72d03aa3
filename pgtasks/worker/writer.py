"""TaskWriter: what running tasks write (checkpoints, log lines, progress) and read (their
completed steps), on the worker's own small pool.

Every task of a worker shares this pool, so a worker's connection count does not grow with
its concurrency: 200 tasks that checkpoint, log and report progress queue for one or two
connections instead of opening 200. Log lines and progress are already buffered and
coalesced per task by the context (one log batch and one progress write per second at
most), so the queue stays short; a checkpoint is awaited by its task.
Progress writes of different tasks that wait at the same time go out as one statement.
Every call is fenced by the attempt and raises LeaseLost once the task is no longer ours.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import asyncpg

from pgtasks import queries
from pgtasks.db import translated

Progress = tuple[int, int, int, int | None, str | None]  # task_id, attempt, current, total, msg


class TaskWriter:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._progress: list[tuple[Progress, asyncio.Future[None]]] = []
        self._sender: asyncio.Task[None] | None = None

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
        """Queue a progress write and wait for it; writes queued meanwhile by other tasks go
        out in the same statement."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._progress.append(((task_id, attempt, current, total, message), fut))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send_progress())
        await fut

    async def _send_progress(self) -> None:
        while self._progress:
            batch, self._progress = self._progress, []
            try:
                async with translated():
                    await self.pool.execute(
                        queries.REPORT_PROGRESS_MANY,
                        *(list(col) for col in zip(*(w for w, _ in batch), strict=True)),
                    )
            except Exception as exc:
                if len(batch) == 1:
                    _settle(batch[0][1], exc)
                    continue
                # One task's write was refused (e.g. its lease is lost): write them one by
                # one, so each task hears its own answer.
                for write, fut in batch:
                    try:
                        async with translated():
                            await self.pool.execute(queries.REPORT_PROGRESS, *write)
                    except Exception as one:
                        _settle(fut, one)
                    else:
                        _settle(fut, None)
                continue
            for _, fut in batch:
                _settle(fut, None)


def _settle(fut: asyncio.Future[None], exc: BaseException | None) -> None:
    if fut.done():  # the task was cancelled meanwhile
        return
    if exc is None:
        fut.set_result(None)
    else:
        fut.set_exception(exc)
