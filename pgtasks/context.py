"""What a running task sees: step, progress, log, sleep_until and cancelled.

Every write goes through a fenced SQL function with this attempt's token, so a task whose
lease was lost cannot change anything: its writes raise LeaseLost and the worker drops it.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from pgtasks import db
from pgtasks.errors import PgTasksError

if TYPE_CHECKING:
    from pgtasks.worker import Worker

T = TypeVar("T")

#: The task the current coroutine or thread is running: routes `logging` records to its log.
current_task: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "pgtasks_current_task", default=None
)

PROGRESS_INTERVAL = 1.0  # seconds between progress writes; the last value always lands


class StepError(PgTasksError):
    """A step was misused: a name repeated in one run, or a result that is not JSON."""


class YieldTask(BaseException):
    """Raised by ctx.sleep_until: the worker hands the task back until `run_at`."""

    def __init__(self, run_at: datetime) -> None:
        super().__init__(run_at)
        self.run_at = run_at


class TaskContext:
    """Passed to async tasks as `ctx`. One per attempt."""

    def __init__(
        self,
        worker: Worker,
        *,
        task_id: int,
        attempt: int,
        task_type: str,
        queue: str,
        retry_count: int,
        max_retries: int,
        has_steps: bool,
    ) -> None:
        self.worker = worker
        self.task_id = task_id
        self.attempt = attempt
        self.task_type = task_type
        self.queue = queue
        self.retry_count = retry_count
        self.max_retries = max_retries
        self._has_steps = has_steps
        self._steps: dict[str, Any] | None = None
        self._used_steps: set[str] = set()
        self._cancel = asyncio.Event()
        self.cancel_reason: str | None = None
        self._progress: tuple[int, int | None, str | None] | None = None
        self._progress_written_at = 0.0
        self._progress_dirty = False
        self._progress_flush: asyncio.TimerHandle | None = None
        self.progress_writes = 0  # how many progress writes reached the database

    @property
    def pool(self) -> asyncpg.Pool:
        return self.worker.pool

    # -- cancellation --------------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        """True once the task was cancelled, its lease lost, or the worker gave up on it."""
        return self._cancel.is_set()

    def _mark_cancelled(self, reason: str) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self._cancel.set()

    # -- steps ---------------------------------------------------------------------------

    async def _load_steps(self) -> dict[str, Any]:
        if self._steps is None:
            self._steps = {}
            if self._has_steps:
                rows = await self.pool.fetch(
                    "SELECT name, result FROM pgtasks.task_steps WHERE task_id = $1", self.task_id
                )
                self._steps = {r["name"]: r["result"] for r in rows}
        return self._steps

    async def step(
        self, name: str, fn: Callable[..., T | Awaitable[T]], *args: Any, **kw: Any
    ) -> T:
        """Run `fn` once per task: its result is committed before the task goes on.

        A later attempt (after a crash, a retry or a sleep) gets the stored result back
        without running `fn` again. The result must be JSON-serialisable. Sync functions
        run in a thread so they do not block the worker's event loop.
        """
        if not isinstance(name, str) or not name:
            raise StepError("step name must be a non-empty string")
        if name in self._used_steps:
            raise StepError(
                f"step {name!r} ran twice in one attempt; give each step a unique name "
                "(e.g. f'batch-{i}')"
            )
        self._used_steps.add(name)
        steps = await self._load_steps()
        if name in steps:
            return steps[name]  # type: ignore[no-any-return]
        if inspect.iscoroutinefunction(fn):
            result = await fn(*args, **kw)
        else:
            ctx = contextvars.copy_context()
            result = await asyncio.get_running_loop().run_in_executor(
                self.worker.threads, lambda: ctx.run(fn, *args, **kw)
            )
            if inspect.isawaitable(result):
                result = await result
        try:
            db.dumps(result)
        except (TypeError, ValueError) as exc:
            raise StepError(
                f"step {name!r} returned {type(result).__name__}, which is not JSON: {exc}; "
                "return dicts, lists, strings, numbers, booleans or None"
            ) from exc
        async with db.translated():
            await self.pool.execute(
                "SELECT pgtasks.checkpoint($1, $2, $3, $4)",
                self.task_id,
                self.attempt,
                name,
                result,
            )
        steps[name] = result
        return result  # type: ignore[no-any-return]

    # -- progress ------------------------------------------------------------------------

    async def progress(
        self, current: int, total: int | None = None, message: str | None = None
    ) -> None:
        """Report progress. Writes are coalesced to one per second; the last value always lands."""
        if current < 0 or (total is not None and not 0 <= current <= total):
            raise PgTasksError(
                f"progress {current} of {total} is out of bounds; use 0 <= current <= total"
            )
        self._progress = (current, total, message)
        self._progress_dirty = True
        now = time.monotonic()
        if now - self._progress_written_at >= PROGRESS_INTERVAL:
            await self.flush_progress()
        elif self._progress_flush is None:
            loop = asyncio.get_running_loop()
            delay = PROGRESS_INTERVAL - (now - self._progress_written_at)
            self._progress_flush = loop.call_later(
                delay, lambda: self.worker.spawn(self.flush_progress())
            )

    async def flush_progress(self) -> None:
        """Write the latest progress now, if it changed since the last write."""
        if self._progress_flush is not None:
            self._progress_flush.cancel()
            self._progress_flush = None
        if not self._progress_dirty or self._progress is None:
            return
        current, total, message = self._progress
        self._progress_dirty = False
        self._progress_written_at = time.monotonic()
        async with db.translated():
            await self.pool.execute(
                "SELECT pgtasks.report_progress($1, $2, $3, $4, $5)",
                self.task_id,
                self.attempt,
                current,
                total,
                message,
            )
        self.progress_writes += 1

    # -- logs ----------------------------------------------------------------------------

    async def log(self, level: str | int, message: str) -> None:
        """Append a line to this task's log (pgtasks.task_logs), tagged with the attempt."""
        name = logging.getLevelName(level) if isinstance(level, int) else str(level).upper()
        async with db.translated():
            await self.pool.execute(
                "SELECT pgtasks.log($1, $2, $3, $4)", self.task_id, self.attempt, name, message
            )

    # -- yielding ------------------------------------------------------------------------

    async def sleep_until(self, when: datetime) -> None:
        """Hand the task back until `when`, freeing the worker slot; does not use a retry.

        The task's code runs again from the top at `when`; completed steps return their
        stored results, so put the work before the sleep in steps.
        """
        if when.tzinfo is None:
            when = when.astimezone()
        await self.flush_progress()
        raise YieldTask(when)

    async def sleep(self, seconds: float | timedelta) -> None:
        secs = seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds)
        await self.sleep_until(datetime.now().astimezone() + timedelta(seconds=secs))


class SyncTaskContext:
    """The blocking twin of TaskContext, passed to plain `def` tasks running in a thread."""

    def __init__(self, ctx: TaskContext, loop: asyncio.AbstractEventLoop) -> None:
        self._ctx = ctx
        self._loop = loop
        self.task_id = ctx.task_id
        self.attempt = ctx.attempt
        self.task_type = ctx.task_type
        self.queue = ctx.queue
        self.retry_count = ctx.retry_count
        self.max_retries = ctx.max_retries

    def _call(self, coro: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()  # type: ignore[arg-type]

    @property
    def cancelled(self) -> bool:
        return self._ctx.cancelled

    def step(self, name: str, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        return self._call(self._ctx.step(name, fn, *args, **kw))

    def progress(self, current: int, total: int | None = None, message: str | None = None) -> None:
        self._call(self._ctx.progress(current, total, message))

    def log(self, level: str | int, message: str) -> None:
        self._call(self._ctx.log(level, message))

    def sleep_until(self, when: datetime) -> None:
        self._call(self._ctx.flush_progress())
        raise YieldTask(when if when.tzinfo else when.astimezone())

    def sleep(self, seconds: float | timedelta) -> None:
        secs = seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds)
        self.sleep_until(datetime.now().astimezone() + timedelta(seconds=secs))
