"""TaskWriter: what running tasks write (checkpoints, log lines, progress) and read (their
completed steps), on the worker's own small pool.

Every task of a worker shares this pool, so a worker's connection count does not grow with
its concurrency: 200 tasks that checkpoint, log and report progress queue for one or two
connections instead of opening 200. Log lines and progress are already buffered and
coalesced per task by the context (one log batch and one progress write per second at
most), so the queue stays short; a checkpoint is awaited by its task.
Progress writes, and log batches, of different tasks that wait at the same time go out as
one statement each.
Every call is fenced by the attempt's lease token and raises LeaseLost once the task is no
longer ours. A call that met the task's row locked by another session for longer than the
SQL function's lock_timeout (asyncpg.LockNotAvailableError, a transient error) is tried
again: the row comes free, or the attempt ends and the call raises LeaseLost.
A call that lost its connection (a killed backend, a restart, a failover) is tried again on
a fresh one for as long as the lease can still hold: a result or checkpoint already
computed is not thrown away for an outage shorter than the lease. Past the lease the
database refuses the write through the lease token, so retrying longer would gain nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import asyncpg

from pgtasks import queries
from pgtasks.db import TRANSIENT, translated

T = TypeVar("T")

log = logging.getLogger("pgtasks.worker")

Line = tuple[str, str, str | None, datetime]  # level, message, logger, at

#: Longest pause between tries of a fenced call that met a locked row.
BUSY_RETRY_MAX_S = 2.0

#: Longest pause between tries of a write that lost its connection: a failover promotes a
#: replica in a few seconds, so waking each second keeps the first write on it prompt.
OUTAGE_RETRY_MAX_S = 1.0


async def while_busy(call: Callable[[], Awaitable[T]]) -> T:
    """`call()`, tried again while the task's row is locked by another session.

    Each try waits at most the function's lock_timeout (1 s), so the caller can still be
    cancelled between tries (a cancel, the task's time limit, a shutdown)."""
    delay = 0.1
    while True:
        try:
            return await call()
        except asyncpg.LockNotAvailableError:
            await asyncio.sleep(delay)
            delay = min(delay * 2, BUSY_RETRY_MAX_S)


class Coalescer:
    """Writes that wait at the same time, from different tasks, go out as one statement.

    `many(items)` gives the arguments of the statement for a whole batch, `one(item)`
    those of the single-task statement. When the batch is refused (one task's lease is
    lost, say), its items are written one by one, so each caller hears its own answer.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        many: tuple[str, Callable[[list[Any]], tuple[Any, ...]]],
        one: tuple[str, Callable[[Any], tuple[Any, ...]]],
    ) -> None:
        self.pool = pool
        self.many = many
        self.one = one
        self._queue: list[tuple[Any, asyncio.Future[None]]] = []
        self._sender: asyncio.Task[None] | None = None
        self.statements = 0  # sent, for tests and stats

    async def write(self, item: Any) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._queue.append((item, fut))
        if self._sender is None or self._sender.done():
            self._sender = loop.create_task(self._send())
        await fut

    async def _send(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            if len(batch) > 1:
                sql, args = self.many
                if await self._run(sql, args([item for item, _ in batch]), batch):
                    continue
            sql, arg = self.one
            for item, fut in batch:
                await self._run(sql, arg(item), [(item, fut)])

    async def _run(self, sql: str, args: tuple[Any, ...], batch: list[Any]) -> bool:
        """Run one statement for `batch`; settle its futures unless a batch of many failed."""
        self.statements += 1
        try:
            async with translated():
                await self.pool.execute(sql, *args)
        except Exception as exc:
            if len(batch) > 1:
                return False
            _settle(batch[0][1], exc)
            return True
        for _, fut in batch:
            _settle(fut, None)
        return True


def _columns(items: list[tuple[Any, ...]]) -> tuple[list[Any], ...]:
    return tuple(list(col) for col in zip(*items, strict=True))


def _log_rows(items: list[tuple[int, str, list[Line]]]) -> tuple[list[Any], ...]:
    """One row per line: (task_id, lease_token, level, message, at, logger)."""
    return _columns([(t, k, ln[0], ln[1], ln[3], ln[2]) for t, k, lines in items for ln in lines])


def _log_one(item: tuple[int, str, list[Line]]) -> tuple[Any, ...]:
    task_id, lease_token, lines = item
    return (task_id, lease_token, *_columns([(ln[0], ln[1], ln[3], ln[2]) for ln in lines]))


def clip(text: str | None, max_bytes: int | None) -> str | None:
    """`text` cut to at most `max_bytes` UTF-8 bytes, saying how much was cut.

    The limit is the database's (settings.max_log_bytes): a line over it would be refused
    with PT204 together with every line of its batch, so it is shortened instead."""
    if text is None or max_bytes is None:
        return text
    raw = text.encode()
    if len(raw) <= max_bytes:
        return text
    note = f" [... {len(raw)} bytes, clipped to max_log_bytes]"
    keep = max(max_bytes - len(note.encode()), 0)
    return raw[:keep].decode("utf-8", "ignore") + note


class TaskWriter:
    def __init__(
        self, pool: asyncpg.Pool, *, max_log_bytes: int | None = None, lease: float | None = None
    ) -> None:
        self.pool = pool
        self.max_log_bytes = max_log_bytes
        self.lease = lease  # seconds; how long writes are retried through lost connections
        self.outage_retries = 0  # writes sent again after a lost connection, for tests and stats
        self.progress_writes = Coalescer(
            pool,
            (queries.REPORT_PROGRESS_MANY, _columns),
            (queries.REPORT_PROGRESS, lambda item: item),
        )
        self.log_writes = Coalescer(
            pool, (queries.LOG_MANY_TASKS, _log_rows), (queries.LOG_MANY, _log_one)
        )

    async def _through_outages(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call()`, tried again through lost connections for `self.lease` seconds.

        An outage that also cuts the lease keeper ends the lease at most `lease` seconds
        after the first failure; past that the database would refuse the write anyway (the
        lease token fences it), so the error is raised. A lease the keeper finds lost stops
        the attempt sooner, cancelling this wait. A write whose commit succeeded but whose
        answer was lost is sent again: checkpoints are upserts, a log batch may repeat.
        No lease known (None): the first error is raised."""
        loop = asyncio.get_running_loop()
        give_up_at: float | None = None
        delay = 0.05
        while True:
            try:
                return await call()
            except TRANSIENT as exc:
                now = loop.time()
                if self.lease is None:
                    raise
                if give_up_at is None:
                    give_up_at = now + self.lease
                    log.info(
                        "task write lost its connection (%s); retrying while the lease holds", exc
                    )
                if now + delay >= give_up_at:
                    raise
                self.outage_retries += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, OUTAGE_RETRY_MAX_S)

    async def steps(self, task_id: int, lease_token: str) -> list[tuple[str, Any, datetime]]:
        async with translated():
            rows = await while_busy(
                lambda: self.pool.fetch(queries.TASK_STEPS, task_id, lease_token)
            )
        return [(r["name"], r["result"], r["db_now"]) for r in rows]

    async def parent_results(self, task_id: int, lease_token: str) -> dict[str, Any]:
        async with translated():
            raw = await while_busy(
                lambda: self.pool.fetchval(queries.PARENT_RESULTS, task_id, lease_token)
            )
        return dict(raw or {})

    async def checkpoint(self, task_id: int, lease_token: str, name: str, value: Any) -> None:
        async with translated():
            await self._through_outages(
                lambda: while_busy(
                    lambda: self.pool.execute(queries.CHECKPOINT, task_id, lease_token, name, value)
                )
            )

    async def wait_for_event(
        self, task_id: int, lease_token: str, name: str, timeout: timedelta | None
    ) -> tuple[str, Any]:
        async with translated():
            row = await while_busy(
                lambda: self.pool.fetchrow(
                    queries.WAIT_FOR_EVENT, task_id, lease_token, name, timeout
                )
            )
        assert row is not None
        return row["state"], row["payload"]

    async def record_trace(self, task_id: int, lease_token: str, traceparent: str) -> None:
        async with translated():
            await while_busy(
                lambda: self.pool.fetchval(queries.RECORD_TRACE, task_id, lease_token, traceparent)
            )

    async def spawn_children(
        self,
        task_id: int,
        lease_token: str,
        step: str,
        children: list[dict[str, Any]],
        traceparent: str | None = None,
    ) -> list[int]:
        """Idempotent in the database: sent again through a lost connection, it returns
        the children the first call spawned."""
        doc = json.dumps(children)
        async with translated():
            ids = await self._through_outages(
                lambda: while_busy(
                    lambda: self.pool.fetchval(
                        queries.SPAWN_CHILDREN, task_id, lease_token, step, doc, traceparent
                    )
                )
            )
        return [int(i) for i in ids]

    async def wait_for_children(self, task_id: int, lease_token: str) -> tuple[str, Any]:
        async with translated():
            row = await while_busy(
                lambda: self.pool.fetchrow(queries.WAIT_FOR_CHILDREN, task_id, lease_token)
            )
        assert row is not None
        return row["state"], row["results"]

    async def logs(self, task_id: int, lease_token: str, lines: list[Line]) -> None:
        """Buffered lines of one attempt. A refusal (LeaseLost, a locked row) reaches the
        caller, which keeps the lines for its next flush."""
        if lines:
            limit = self.max_log_bytes
            if limit is not None:
                lines = [(lv, clip(msg, limit) or "", lg, at) for lv, msg, lg, at in lines]
            item = (task_id, lease_token, lines)
            await self._through_outages(lambda: self.log_writes.write(item))

    async def progress(
        self, task_id: int, lease_token: str, current: int, total: int | None, message: str | None
    ) -> None:
        message = clip(message, self.max_log_bytes)
        item = (task_id, lease_token, current, total, message)
        await self._through_outages(lambda: self.progress_writes.write(item))


def _settle(fut: asyncio.Future[None], exc: BaseException | None) -> None:
    if fut.done():  # the task was cancelled meanwhile
        return
    if exc is None:
        fut.set_result(None)
    else:
        fut.set_exception(exc)
