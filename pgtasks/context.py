"""What a running task sees: step, progress, log, sleep_until and cancelled.

A context is a value (task_id, attempt, type, queue, retries) plus the few tools the task
needs, handed in by whoever runs it: a `writer` for checkpoints, logs and progress, a
`run_blocking` to run sync code in a thread, a cancel event, and an accessor for `ctx.pool`.
It holds no reference to a Worker (and this module imports nothing from pgtasks.worker).

Every write goes through a fenced SQL function with this attempt's lease token (the secret
its claim returned), so a task whose lease was lost cannot change anything: its writes raise
LeaseLost and the worker drops it.

Progress and log lines are buffered and written in the background (at most one progress
write and one log batch per FLUSH_INTERVAL, or sooner when LOG_BATCH lines are waiting), so a
task that reports 100,000 times or logs in a tight loop does not do one round trip per call.
Everything buffered is written before a step's checkpoint, before a sleep, and before the
task's result, error or hand-back is recorded, so what the database shows is never behind
the task's own durable state.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

import asyncpg

from pgtasks import tracing
from pgtasks.db import DATABASE_ERRORS
from pgtasks.errors import (
    EventTimeout,
    LeaseLost,
    PermanentError,
    PgTasksError,
    Snooze,
    SoftTimeLimitExceeded,
)
from pgtasks.workflows import TaskNode, child_results_from, child_spec, parent_results_from

T = TypeVar("T")

log = logging.getLogger("pgtasks.context")

#: The task the current coroutine or thread is running: routes `logging` records to its log.
current_task: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "pgtasks_current_task", default=None
)

FLUSH_INTERVAL = 1.0  # seconds between background progress/log writes; the last value lands
LOG_BATCH = 500  # buffered log lines that trigger a write before the interval is up
LOG_STATEMENT_MAX = 5_000  # lines per log_many statement (a flush takes all that waits)
MAX_BUFFERED_LOGS = 100_000  # beyond this (database down, or a loop that never awaits), lines
#                              are counted and dropped; a WARNING line says how many


#: What a best-effort flush tolerates: the attempt is no longer ours, or the database is away
#: or refused the write.
_NOT_WRITTEN: tuple[type[BaseException], ...] = (LeaseLost, *DATABASE_ERRORS)


class Writer(Protocol):
    """Where a context's writes go (pgtasks.worker.writer.TaskWriter). Each call is fenced
    by (task_id, lease_token) and raises LeaseLost once the attempt no longer owns the task."""

    async def steps(self, task_id: int, lease_token: str) -> list[tuple[str, Any, datetime]]: ...

    async def checkpoint(self, task_id: int, lease_token: str, name: str, value: Any) -> None: ...

    async def logs(
        self, task_id: int, lease_token: str, lines: list[tuple[str, str, str | None, datetime]]
    ) -> None: ...

    async def progress(
        self,
        task_id: int,
        lease_token: str,
        current: int,
        total: int | None,
        message: str | None,
    ) -> None: ...

    async def parent_results(self, task_id: int, lease_token: str) -> dict[str, Any]: ...

    async def wait_for_event(
        self, task_id: int, lease_token: str, name: str, timeout: timedelta | None
    ) -> tuple[str, Any]: ...

    async def record_trace(self, task_id: int, lease_token: str, traceparent: str) -> None: ...
    async def spawn_children(
        self,
        task_id: int,
        lease_token: str,
        step: str,
        children: list[dict[str, Any]],
        traceparent: str | None = None,
    ) -> list[int]: ...

    async def wait_for_children(self, task_id: int, lease_token: str) -> tuple[str, Any]: ...


RunBlocking = Callable[[Callable[[], Any]], Awaitable[Any]]


async def _in_default_executor(fn: Callable[[], Any]) -> Any:
    return await asyncio.get_running_loop().run_in_executor(
        None, contextvars.copy_context().run, fn
    )


def _no_pool() -> asyncpg.Pool:
    raise PgTasksError("this context has no database pool (ctx.pool)")


class StepError(PgTasksError, PermanentError):
    """A step was misused: a name repeated in one run, or a result that is not JSON.

    It is a PermanentError: retrying runs the same code and fails the same way, so the
    task goes straight to FAILED with this message instead of burning its retries.
    """


class YieldTask(BaseException):
    """Raised by ctx.sleep_until: the worker hands the task back until `run_at`.

    A BaseException so that a task's own `except Exception` does not swallow it.
    """

    def __init__(self, run_at: datetime) -> None:
        super().__init__(run_at)
        self.run_at = run_at


class TaskParked(BaseException):
    """Raised by ctx.wait_for_event and ctx.wait_for_children once the database parked the
    task (it waits, holding nothing): the attempt is over and the worker has nothing to
    write. Its message says what it waits for.

    A BaseException so that a task's own `except Exception` does not swallow it."""


def _timeout(timeout: float | timedelta | None) -> timedelta | None:
    if timeout is None or isinstance(timeout, timedelta):
        return timeout
    return timedelta(seconds=float(timeout))


def _jsonable(name: str, result: Any) -> Any:
    """The value as a resumed attempt will see it: JSON round-tripped.

    Returning the round-tripped value on the first run too means a fresh and a resumed
    attempt see the same thing (a tuple becomes a list, int dict keys become strings),
    instead of code that only breaks after a crash.
    """
    dump = getattr(result, "model_dump", None)
    if callable(dump):
        result = dump(mode="json")
    try:
        return json.loads(json.dumps(result, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise StepError(
            f"step {name!r} returned {type(result).__name__}, which is not JSON: {exc}; "
            "return dicts, lists, strings, numbers, booleans or None (or a pydantic model)"
        ) from exc


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.astimezone()


class TaskContext:
    """Passed to async tasks as `ctx`. One per attempt."""

    def __init__(
        self,
        *,
        task_id: int,
        attempt: int,
        lease_token: str,
        task_type: str,
        queue: str,
        retry_count: int,
        max_retries: int,
        has_steps: bool,
        writer: Writer,
        run_blocking: RunBlocking = _in_default_executor,
        pool: Callable[[], asyncpg.Pool] = _no_pool,
        soft_deadline: datetime | None = None,
    ) -> None:
        self.writer = writer
        self._run_blocking = run_blocking
        self._pool = pool
        self.task_id = task_id
        self.attempt = attempt  # a counter for people; the fence is the token
        # The attempt's secret: every write presents it. Kept out of repr and logs.
        self._lease_token = lease_token
        self.task_type = task_type
        self.queue = queue
        self.retry_count = retry_count
        self.max_retries = max_retries
        self._has_steps = has_steps
        #: When the soft time limit passes, as the claim computed it (None: no soft limit).
        self.soft_deadline = soft_deadline
        self._soft_passed = False  # set on the loop by the runner's timer
        self._soft_raised = False  # SoftTimeLimitExceeded is raised once per attempt
        # The attempt span's traceparent while the task has none (pgtasks.tracing): the
        # runner sets it; whatever ends the attempt towards another records it first.
        self._new_trace: str | None = None
        self._steps: dict[str, Any] | None = None
        self._db_clock_offset = 0.0  # database now() minus local time, seen when steps load
        self._used_steps: set[str] = set()
        self._parents: dict[int, Any] | None = None
        self._sleeps = 0
        self._spawns = 0
        self._cancel = asyncio.Event()
        self.cancel_reason: str | None = None  # why the worker stopped it (StopReason)
        self._loop = asyncio.get_running_loop()
        # Buffered writes. _lock guards the fields below it: task threads append too.
        self._lock = threading.Lock()
        self._progress: tuple[int, int | None, str | None] | None = None
        self._progress_dirty = False
        self._logs: list[tuple[str, str, str | None, datetime]] = []
        self._logs_dropped = 0
        self._armed = False  # a background flush is scheduled or running
        self._urgent = False  # enough log lines are waiting: flush without the interval
        self._closed = False
        # Loop-only state.
        self._timer: asyncio.TimerHandle | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self._flushed_at = 0.0
        self.progress_writes = 0  # progress writes that reached the database
        self.log_writes = 0  # log batches that reached the database

    @property
    def pool(self) -> asyncpg.Pool:
        """A pool for the task's own queries: separate from the worker's, small
        (`--task-pool-size`), and it opens no connection until a task uses it."""
        return self._pool()

    # -- workflows (pgtasks.workflows) ---------------------------------------------------

    async def _parent_results(self) -> dict[int, Any]:
        if self._parents is None:
            raw = await self.writer.parent_results(self.task_id, self._lease_token)
            self._parents = parent_results_from(raw)
        return dict(self._parents)

    async def _parent_result(self) -> Any:
        results = await self._parent_results()
        if len(results) != 1:
            raise PgTasksError(
                f"task {self.task_id} has {len(results)} parents; ctx.parent_result is for "
                "exactly one (use ctx.parent_results)"
            )
        return next(iter(results.values()))

    @property
    def parent_results(self) -> Awaitable[dict[int, Any]]:
        """`await ctx.parent_results`: the parents' results by task id, in submit order. A
        parent that ended FAILED or CANCELLED (seen only with on_parent_failure="run") maps
        to a ParentFailure. Read from the database once, on first use: the claim of a task
        without parents carries nothing extra."""
        return self._parent_results()

    @property
    def parent_result(self) -> Awaitable[Any]:
        """`await ctx.parent_result`: the one parent's result (a chain step's input)."""
        return self._parent_result()

    # -- the soft time limit --------------------------------------------------------------

    @property
    def soft_deadline_passed(self) -> bool:
        """True once the soft time limit (soft_timeout) passed: time to wrap up."""
        return self._soft_passed

    def _take_soft_limit(self) -> bool:
        """True exactly once after the soft limit passed: the caller raises it then."""
        if not self._soft_passed or self._soft_raised:
            return False
        self._soft_raised = True
        return True

    def _raise_soft_limit(self) -> None:
        """Raise SoftTimeLimitExceeded if the soft limit passed and it was not raised yet."""
        if self._take_soft_limit():
            raise SoftTimeLimitExceeded(
                f"task {self.task_id} passed its soft time limit"
                f" (soft deadline {self.soft_deadline})"
            )

    # -- cancellation --------------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        """True once the task was cancelled, its lease lost, or the worker gave up on it."""
        return self._cancel.is_set()

    def _mark_cancelled(self, reason: str) -> None:
        """Set by the worker as it stops the attempt. `reason` is a pgtasks.worker.StopReason,
        a str enum, so this module needs nothing from the worker package and task code may
        compare `ctx.cancel_reason` with plain strings ("timeout", "shutdown", ...)."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self._cancel.set()

    # -- steps ---------------------------------------------------------------------------

    async def _load_steps(self) -> dict[str, Any]:
        if self._steps is None:
            self._steps = {}
            if self._has_steps:
                rows = await self.writer.steps(self.task_id, self._lease_token)
                self._steps = {name: result for name, result, _ in rows}
                if rows:
                    self._db_clock_offset = rows[0][2].timestamp() - time.time()
        return self._steps

    def _claim_step_name(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise StepError("step name must be a non-empty string")
        if name in self._used_steps:
            raise StepError(
                f"step {name!r} ran twice in one attempt; give each step a unique name "
                "(e.g. f'batch-{i}')"
            )
        self._used_steps.add(name)

    async def _lookup_step(self, name: str) -> tuple[bool, Any]:
        """(True, stored result) when an earlier attempt completed this step."""
        self._claim_step_name(name)
        steps = await self._load_steps()
        if name in steps:
            return True, steps[name]
        return False, None

    async def _store_step(self, name: str, result: Any) -> Any:
        """Checkpoint a step's result; buffered logs and progress are written first."""
        value = _jsonable(name, result)
        await self.flush()
        await self.writer.checkpoint(self.task_id, self._lease_token, name, value)
        assert self._steps is not None
        self._steps[name] = value
        return value

    async def step(
        self, name: str, fn: Callable[..., T | Awaitable[T]], *args: Any, **kw: Any
    ) -> T:
        """Run `fn` once per task: its result is committed before the task goes on.

        A later attempt (after a crash, a retry or a sleep) gets the stored result back
        without running `fn` again. The result must be JSON-serialisable and is returned
        as JSON round-trips it, so the first run and a resumed one see the same value.
        Sync functions run in a thread so they do not block the worker's event loop.
        `fn` itself may run more than once (a crash after it ran but before the commit),
        so make its side effects idempotent.
        """
        found, stored = await self._lookup_step(name)
        if found:
            tracing.step_event(
                "pgtasks.step", {"pgtasks.step.name": name, "pgtasks.step.resumed": True}
            )
            earlier: T = stored  # what fn returned then, as JSON gave it back
            return earlier
        if inspect.iscoroutinefunction(fn):
            result = await fn(*args, **kw)
        else:
            result = await self._run_blocking(lambda: fn(*args, **kw))
            if inspect.isawaitable(result):
                result = await result
        stored_now: T = await self._store_step(name, result)  # fn's result, JSON round-tripped
        tracing.step_event(
            "pgtasks.step", {"pgtasks.step.name": name, "pgtasks.step.resumed": False}
        )
        return stored_now

    # -- buffered writes: progress and logs ----------------------------------------------

    def _set_progress(self, current: int, total: int | None, message: str | None) -> None:
        if (
            not isinstance(current, int)
            or current < 0
            or (total is not None and not 0 <= current <= total)
        ):
            raise PgTasksError(
                f"progress {current} of {total} is out of bounds; use 0 <= current <= total"
            )
        with self._lock:
            if self._closed:
                return
            prev = self._progress
            if message is None and prev is not None:
                message = prev[2]  # the database keeps the last message too
            self._progress = (current, total, message)
            self._progress_dirty = True

    def _append_log(
        self, level: str, message: str, logger: str | None, at: datetime | None = None
    ) -> bool:
        """Buffer one line (any thread). True when the loop should be told to flush."""
        stamp = at or datetime.now(UTC)
        # One line the database cannot take must not block the batch it travels in:
        # PostgreSQL text holds no NUL, and lone surrogates do not encode as UTF-8.
        if "\x00" in message:
            message = message.replace("\x00", "\\x00")
        try:
            message.encode()
        except UnicodeEncodeError:
            message = message.encode("utf-8", "backslashreplace").decode()
        with self._lock:
            if self._closed:
                return False
            if len(self._logs) >= MAX_BUFFERED_LOGS:
                self._logs_dropped += 1
                return False
            self._logs.append((level, message, logger, stamp))
            became_urgent = not self._urgent and len(self._logs) >= LOG_BATCH
            if became_urgent:
                self._urgent = True
            notify = not self._armed or became_urgent
            self._armed = True
            return notify

    def _due(self) -> bool:
        """A write is owed now: the interval passed, or a full batch of logs waits."""
        if self._write_lock.locked():
            return False
        return self._urgent or time.monotonic() - self._flushed_at >= FLUSH_INTERVAL

    def _arm(self) -> None:
        """Loop only: make sure a background flush will write what is buffered."""
        with self._lock:
            pending = self._progress_dirty or bool(self._logs)
            self._armed = pending and not self._closed
            urgent = self._urgent
        if not self._armed or self._flusher is not None:
            return  # nothing to do, or the running flusher re-arms when it ends
        delay = 0.0 if urgent else max(0.0, self._flushed_at + FLUSH_INTERVAL - time.monotonic())
        when = self._loop.time() + delay
        if self._timer is not None:
            if self._timer.when() <= when:
                return
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._on_timer)

    def _arm_threadsafe(self) -> None:
        self._loop.call_soon_threadsafe(self._arm)

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed:
            return
        # An empty context: nothing the flush logs (asyncpg, pgtasks) is routed to the task.
        self._flusher = self._loop.create_task(
            self._background_flush(), context=contextvars.Context()
        )

    async def _background_flush(self) -> None:
        try:
            await self.flush()
        except LeaseLost:
            self._close()  # the task is someone else's now; the worker will stop it
        except Exception as exc:  # kept buffered; the final flush reports what persists
            log.warning("task %s: progress/log write failed (%s); will retry", self.task_id, exc)
        finally:
            self._flusher = None
        self._arm()

    async def flush(self) -> None:
        """Write buffered log lines, then the latest progress, now. Raises LeaseLost.

        The worker calls this before recording a result, an error or a hand-back; steps
        call it before their checkpoint. Writes are serialised, so they land in order.
        """
        async with self._write_lock:
            # Only what is buffered now: lines a thread adds meanwhile wait for the next
            # flush, so a busy producer cannot turn one flush into many small batches.
            with self._lock:
                owed = len(self._logs) + (1 if self._logs_dropped else 0)
            while owed > 0:
                with self._lock:
                    take = min(owed, LOG_STATEMENT_MAX)
                    batch, self._logs = self._logs[:take], self._logs[take:]
                    dropped, self._logs_dropped = self._logs_dropped, 0
                    self._urgent = len(self._logs) >= LOG_BATCH
                owed -= max(len(batch), 1)
                if dropped:
                    batch.append(
                        (
                            "WARNING",
                            f"pgtasks: {dropped} log line(s) dropped: the buffer was full "
                            "while the database was unreachable",
                            "pgtasks",
                            datetime.now(UTC),
                        )
                    )
                if not batch:
                    break
                try:
                    await self.writer.logs(self.task_id, self._lease_token, batch)
                except BaseException:
                    with self._lock:  # keep the lines, in order, for the next try
                        self._logs[:0] = batch
                    raise
                self.log_writes += 1
            with self._lock:
                snapshot = self._progress if self._progress_dirty else None
                self._progress_dirty = False
            if snapshot is not None:
                current, total, message = snapshot
                try:
                    await self.writer.progress(
                        self.task_id, self._lease_token, current, total, message
                    )
                except BaseException:
                    with self._lock:
                        self._progress_dirty = True
                    raise
                self.progress_writes += 1
            self._flushed_at = time.monotonic()

    async def _flush_quietly(self) -> None:
        """Best effort before recording an error or a hand-back: never masks the outcome."""
        try:
            await self.flush()
        except _NOT_WRITTEN as exc:
            log.info("task %s: buffered logs/progress not written (%s)", self.task_id, exc)

    def _close(self) -> None:
        """The attempt is over: drop timers and anything still buffered."""
        with self._lock:
            self._closed = True
            self._logs.clear()
            self._progress_dirty = False
            self._armed = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def progress(
        self, current: int, total: int | None = None, message: str | None = None
    ) -> None:
        """Report progress: 0 <= current <= total; the message is kept until replaced.

        Cheap to call often: at most one write per FLUSH_INTERVAL reaches the database
        (the latest value, within about a second), and the final value is always
        written before the task's result. A loop that never yields to the event loop
        still gets a write each interval, because the call writes inline when one is due.
        """
        self._set_progress(current, total, message)
        if self._due():
            await self.flush()
        self._arm()

    async def log(self, level: str | int, message: str) -> None:
        """Append a line to this task's log (pgtasks.task_logs), tagged with the attempt.

        Buffered with the task's `logging` records, so both keep their relative order.
        """
        name = logging.getLevelName(level) if isinstance(level, int) else str(level).upper()
        self._append_log(name, str(message), None)
        if self._due():
            await self.flush()
        self._arm()

    # -- yielding ------------------------------------------------------------------------

    def _sleep_name(self, name: str | None) -> str:
        self._sleeps += 1
        return name if name is not None else f"sleep#{self._sleeps}"

    def _resolve_sleep(self, name: str, stored: Any, found: bool, when: datetime) -> datetime:
        """When this sleep ends: the time stored by the attempt that started it, if any."""
        if not found:
            return when
        if isinstance(stored, dict) and isinstance(stored.get("sleep_until"), str):
            return datetime.fromisoformat(stored["sleep_until"])
        raise StepError(
            f"sleep {name!r} has the name of a step that is not a sleep; "
            "give sleeps and steps different names"
        )

    def _sleep_is_over(self, wake: datetime) -> bool:
        # The database clock decides when a task is claimed again; judge with it too.
        return time.time() + self._db_clock_offset >= wake.timestamp()

    async def sleep_until(self, when: datetime, *, name: str | None = None) -> None:
        """Hand the task back until `when`, freeing the worker slot; does not use a retry.

        The task's code runs again from the top at `when`; completed steps return their
        stored results, and this sleep is itself a step (named `name`, by default
        "sleep#N" for the N-th sleep of a run), so a resumed task passes it instead of
        sleeping again. Put the work before the sleep in steps.
        """
        key = self._sleep_name(name)
        found, stored = await self._lookup_step(key)
        wake = self._resolve_sleep(key, stored, found, _aware(when))
        over = self._sleep_is_over(wake)
        tracing.step_event(
            "pgtasks.sleep",
            {
                "pgtasks.sleep.name": key,
                "pgtasks.sleep.until": wake.isoformat(),
                "pgtasks.sleep.over": over,
            },
        )
        if over:
            return
        if not found:
            await self._store_step(key, {"sleep_until": wake.isoformat()})
        else:
            await self.flush()
        raise YieldTask(wake)

    async def sleep(self, seconds: float | timedelta, *, name: str | None = None) -> None:
        """`sleep_until(now + seconds)`: the wake time is fixed by the first attempt."""
        secs = seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds)
        await self.sleep_until(datetime.now(UTC) + timedelta(seconds=secs), name=name)

    # -- events and snoozes (pgtasks.wait_for_event, pgtasks.snooze_task) ----------------

    async def wait_for_event(self, name: str, timeout: float | timedelta | None = None) -> Any:
        """The payload of the event `name` sent to this task (`pgtasks.send_event`).

        If it has not come yet, the attempt ends here without spending a retry: the task
        holds no slot and no connection until the event arrives (it is claimable at once
        then) or `timeout` passes, and its code runs again from the top, so put the work
        before the wait in steps. The first wait fixes the timeout; once it passed
        without the event, this raises EventTimeout. An event sent before the wait is
        kept, and the first event of a name is the one every later wait returns.
        """
        await self.flush()
        await self._record_new_trace()  # a wait that parks ends the attempt
        state, payload = await self.writer.wait_for_event(
            self.task_id, self._lease_token, name, _timeout(timeout)
        )
        tracing.step_event(
            "pgtasks.wait", {"pgtasks.wait.event": name, "pgtasks.wait.state": state}
        )
        if state == "received":
            return payload
        if state == "timeout":
            raise EventTimeout(name)
        self._close()
        raise TaskParked(f"event {name!r}")

    async def _record_new_trace(self) -> None:
        """Record the attempt's trace as the task's (pgtasks.record_trace), once, best
        effort: a trace is not worth the task's work, so a refusal is only logged."""
        trace, self._new_trace = self._new_trace, None
        if trace is None:
            return
        try:
            await self.writer.record_trace(self.task_id, self._lease_token, trace)
        except _NOT_WRITTEN as exc:
            log.debug("task %s: its trace was not recorded: %s", self.task_id, exc)

    async def snooze(self, seconds: float | timedelta = 0.0) -> None:
        """`raise Snooze(seconds)`: back in `seconds`, no retry spent, checkpoints kept."""
        await self.flush()
        raise Snooze(seconds.total_seconds() if isinstance(seconds, timedelta) else seconds)

    # -- child tasks (pgtasks.spawn_children, pgtasks.wait_for_children) -----------------

    async def spawn(self, children: Iterable[TaskNode], *, name: str | None = None) -> list[int]:
        """Submit `children` (`MyTask.s(params, **options)` each) as children of this task;
        their ids, in the order given.

        The spawn is a step (named `name`, by default "spawn#N" for the N-th spawn of a
        run), checkpointed by the database in the same transaction as the children: a
        resumed attempt gets the same ids back and submits nothing, whether the last one
        died before or after the spawn. Children are ordinary tasks with their own
        retries; `wait_for_children()` waits for them holding nothing.
        """
        try:
            specs = [child_spec(c) for c in children]
        except PgTasksError as exc:  # the same code refuses the same nodes: no retry
            raise StepError(f"ctx.spawn: {exc}") from exc
        self._spawns += 1
        key = name if name is not None else f"spawn#{self._spawns}"
        found, stored = await self._lookup_step(key)
        if found:
            if isinstance(stored, dict) and isinstance(stored.get("spawned"), list):
                return [int(i) for i in stored["spawned"]]
            raise StepError(
                f"spawn {key!r} has the name of a step that is not a spawn; "
                "give spawns and steps different names"
            )
        if not specs:
            return []
        await self.flush()
        # The children's attempts join this attempt's trace, as a Client submit from the
        # task would.
        ids = await self.writer.spawn_children(
            self.task_id, self._lease_token, key, specs, tracing.current_traceparent()
        )
        assert self._steps is not None
        self._steps[key] = {"spawned": ids}
        tracing.step_event(
            "pgtasks.spawn", {"pgtasks.spawn.name": key, "pgtasks.spawn.children": len(ids)}
        )
        return ids

    async def wait_for_children(self) -> list[Any]:
        """The outcome of every child this task spawned, in spawn order: each child's
        result, or a ChildFailure for one that ended FAILED or CANCELLED.

        While a child is unfinished, the attempt ends here without spending a retry: the
        task holds no slot and no connection until its last child ends, when it is
        claimable at once, and its code runs again from the top (its spawns return the
        ids they spawned). Put the work before the wait in steps.
        """
        await self.flush()
        state, raw = await self.writer.wait_for_children(self.task_id, self._lease_token)
        tracing.step_event(
            "pgtasks.wait", {"pgtasks.wait.children": True, "pgtasks.wait.state": state}
        )
        if state == "done":
            return child_results_from(list(raw or []))
        self._close()
        raise TaskParked("its children")


class SyncTaskContext:
    """The blocking twin of TaskContext, passed to plain `def` tasks running in a thread.

    Progress and log calls only touch the shared buffer (no hop to the event loop per
    call); steps run `fn` in the calling thread and hop to the loop only for the database.
    """

    def __init__(self, ctx: TaskContext, loop: asyncio.AbstractEventLoop) -> None:
        self._ctx = ctx
        self._loop = loop
        self.task_id = ctx.task_id
        self.attempt = ctx.attempt
        self.task_type = ctx.task_type
        self.queue = ctx.queue
        self.retry_count = ctx.retry_count
        self.max_retries = ctx.max_retries

    def _call(self, awaitable: Awaitable[T]) -> T:
        """Await on the worker's loop from this thread: any awaitable, since a step's `fn`
        may return one that is not a coroutine (a future, say)."""
        return asyncio.run_coroutine_threadsafe(_awaited(awaitable), self._loop).result()

    @property
    def cancelled(self) -> bool:
        """Like TaskContext.cancelled: True once the task was cancelled or taken away."""
        return self._ctx.cancelled

    @property
    def soft_deadline_passed(self) -> bool:
        """True once the soft time limit passed. A sync task also gets SoftTimeLimitExceeded
        raised at its next ctx call (step, progress, log, flush, sleep), once."""
        return self._ctx.soft_deadline_passed

    @property
    def soft_deadline(self) -> datetime | None:
        """When the soft time limit passes, as the claim computed it (None: none)."""
        return self._ctx.soft_deadline

    @property
    def parent_results(self) -> dict[int, Any]:
        """Like `await ctx.parent_results` on TaskContext: the parents' results by id."""
        return self._call(self._ctx._parent_results())

    @property
    def parent_result(self) -> Any:
        """The one parent's result."""
        return self._call(self._ctx._parent_result())

    def step(self, name: str, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Like TaskContext.step; `fn` runs here, in the task's own thread."""
        self._ctx._raise_soft_limit()
        found, stored = self._call(self._ctx._lookup_step(name))
        if found:
            earlier: T = stored  # what fn returned then, as JSON gave it back
            return earlier
        result: Any = fn(*args, **kw)
        if inspect.isawaitable(result):
            result = self._call(result)
        stored_now: T = self._call(self._ctx._store_step(name, result))
        return stored_now

    def progress(self, current: int, total: int | None = None, message: str | None = None) -> None:
        """Like TaskContext.progress, without waiting: the write is buffered."""
        ctx = self._ctx
        ctx._raise_soft_limit()
        ctx._set_progress(current, total, message)
        with ctx._lock:
            hop = not ctx._armed
            ctx._armed = True
        if hop:
            ctx._arm_threadsafe()

    def log(self, level: str | int, message: str) -> None:
        """Like TaskContext.log, without waiting: the line is buffered."""
        self._ctx._raise_soft_limit()
        name = logging.getLevelName(level) if isinstance(level, int) else str(level).upper()
        if self._ctx._append_log(name, str(message), None):
            self._ctx._arm_threadsafe()

    def flush(self) -> None:
        """Like TaskContext.flush: write the buffered lines and progress now."""
        self._ctx._raise_soft_limit()
        self._call(self._ctx.flush())

    def sleep_until(self, when: datetime, *, name: str | None = None) -> None:
        """Like TaskContext.sleep_until: hand the task back until `when`."""
        ctx = self._ctx
        ctx._raise_soft_limit()
        key = ctx._sleep_name(name)
        found, stored = self._call(ctx._lookup_step(key))
        wake = ctx._resolve_sleep(key, stored, found, _aware(when))
        if ctx._sleep_is_over(wake):
            return
        if not found:
            self._call(ctx._store_step(key, {"sleep_until": wake.isoformat()}))
        else:
            self._call(ctx.flush())
        raise YieldTask(wake)

    def sleep(self, seconds: float | timedelta, *, name: str | None = None) -> None:
        """Like TaskContext.sleep: `sleep_until(now + seconds)`."""
        secs = seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds)
        self.sleep_until(datetime.now(UTC) + timedelta(seconds=secs), name=name)

    def wait_for_event(self, name: str, timeout: float | timedelta | None = None) -> Any:
        """Like TaskContext.wait_for_event: the payload, or the attempt ends here."""
        return self._call(self._ctx.wait_for_event(name, timeout))

    def snooze(self, seconds: float | timedelta = 0.0) -> None:
        """Like TaskContext.snooze: `raise Snooze(seconds)` once buffered writes landed."""
        self._call(self._ctx.snooze(seconds))

    def spawn(self, children: Iterable[TaskNode], *, name: str | None = None) -> list[int]:
        """Like TaskContext.spawn: submit the children, once per spawn step; their ids."""
        self._ctx._raise_soft_limit()
        nodes = list(children)
        return self._call(self._ctx.spawn(nodes, name=name))

    def wait_for_children(self) -> list[Any]:
        """Like TaskContext.wait_for_children: the children's outcomes, or the attempt
        ends here until the last of them ends."""
        self._ctx._raise_soft_limit()
        return self._call(self._ctx.wait_for_children())


# -- Python logging ----------------------------------------------------------------------

_INTERNAL = ("pgtasks", "asyncpg")


def _is_internal(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in _INTERNAL)


class TaskLogHandler(logging.Handler):
    """Routes `logging` records made inside a task to that task's log.

    Installed on the root logger by the worker. The task is found through the
    `current_task` contextvar, which asyncio copies into the task's coroutines and the
    worker copies into its threads. pgtasks' and asyncpg's own records are not task
    output and stay out. Records still need to pass their logger's level: `pgtasks worker`
    configures INFO, and any other application gets INFO too while a worker runs, its
    own handlers still seeing only what they saw before (see install_task_log_handler).
    """

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self._formatter = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        ctx = current_task.get()
        if ctx is not None and not _is_internal(record.name):
            try:
                text = record.getMessage()
                if record.exc_info:
                    text = f"{text}\n{self._formatter.formatException(record.exc_info)}"
                if record.stack_info:
                    text = f"{text}\n{self._formatter.formatStack(record.stack_info)}"
                at = datetime.fromtimestamp(record.created, UTC)
                if ctx._append_log(record.levelname, text, record.name, at):
                    if _on_loop(ctx):
                        ctx._arm()
                    else:
                        ctx._arm_threadsafe()
            except Exception:
                self.handleError(record)
        self._last_resort(record)

    def _last_resort(self, record: logging.LogRecord) -> None:
        """Keep Python's default: with no handler configured, warnings still reach stderr.

        Adding this handler to a bare root logger would otherwise silence logging's
        last-resort stderr output, which an unconfigured app relies on.
        """
        last = logging.lastResort
        if last is None or record.levelno < last.level:
            return
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None:
            if any(h is not self for h in logger.handlers):
                return
            if not logger.propagate:
                break
            logger = logger.parent
        last.handle(record)


def _on_loop(ctx: TaskContext) -> bool:
    try:
        return asyncio.get_running_loop() is ctx._loop
    except RuntimeError:  # a task thread
        return False


_handler: TaskLogHandler | None = None
_installs = 0
_saved_root_level: int | None = None
_lowered_to: int | None = None
_quieted: list[logging.Handler] = []
_install_lock = threading.Lock()


class _OnlyWhatPassedBefore(logging.Filter):
    """Put on the host application's handlers while the worker lowered the root level: a
    record that passes only because of that lowering (its logger inherits the root's level
    and it is below the level the root had) goes to the task log, not to the host's
    handlers, whose output stays what it was."""

    def filter(self, record: logging.LogRecord) -> bool:
        saved = _saved_root_level
        root = logging.getLogger()
        if saved is None or record.levelno >= saved or root.level != _lowered_to:
            return True  # nothing lowered, or the application set the root level since
        logger: logging.Logger | None = (
            root if record.name == "root" else logging.getLogger(record.name)
        )
        while logger is not None and logger is not root:
            if logger.level != logging.NOTSET:
                return True  # its own level let it through, as before the worker
            logger = logger.parent
        return False


_only_what_passed_before = _OnlyWhatPassedBefore()


def install_task_log_handler(level: int = logging.INFO) -> None:
    """Called by Worker.run; reference-counted so several workers in one process share one.

    A logger's level is checked before any handler sees a record, so a task's
    `log.info(...)` on a logger that inherits the root's WARNING (Python's default, and
    what uvicorn and most apps leave) would never reach the task log. When the root
    level is above `level`, the worker lowers it to `level` while workers run, whatever
    handlers the host application installed, and puts a filter on each of the handlers
    present then, so they still receive only what they received before; only the task
    log gets the extra records (and the handler lets WARNING and up reach stderr when no
    other handler would, as Python does). Loggers with a level of their own keep it.
    The cost: a record below the old root level is now created before it is dropped.
    """
    global _handler, _installs, _saved_root_level, _lowered_to
    with _install_lock:
        _installs += 1
        if _installs > 1:
            return
        root = logging.getLogger()
        _handler = TaskLogHandler()
        if root.level > level:
            _saved_root_level = root.level
            for handler in _host_handlers():
                handler.addFilter(_only_what_passed_before)
                _quieted.append(handler)
            _lowered_to = level
            root.setLevel(level)
        root.addHandler(_handler)


def _host_handlers() -> list[logging.Handler]:
    """Every handler of every logger but libraries' NullHandlers, each once."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    found: dict[int, logging.Handler] = {}
    for lg in loggers:
        if isinstance(lg, logging.Logger):
            for h in lg.handlers:
                if not isinstance(h, logging.NullHandler | TaskLogHandler):
                    found[id(h)] = h
    return list(found.values())


def uninstall_task_log_handler() -> None:
    global _handler, _installs, _saved_root_level, _lowered_to
    with _install_lock:
        if _installs == 0:
            return
        _installs -= 1
        if _installs > 0:
            return
        root = logging.getLogger()
        if _handler is not None:
            root.removeHandler(_handler)
            _handler = None
        if _saved_root_level is not None:
            if root.level == _lowered_to:  # not set again by the application since
                root.setLevel(_saved_root_level)
            _saved_root_level = _lowered_to = None
        for handler in _quieted:
            handler.removeFilter(_only_what_passed_before)
        _quieted.clear()
