"""Runner: runs one attempt of one task and returns its outcome as a value.

It writes no SQL. Recording the outcome is the completer's job; the only database traffic
during an attempt is the task's own (through its context's writer and `ctx.pool`).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pgtasks import tracing
from pgtasks.context import SyncTaskContext, TaskContext, TaskParked, YieldTask
from pgtasks.errors import (
    LeaseLost,
    ParamsValidationError,
    PermanentError,
    PgTasksError,
    Retry,
    Snooze,
    SoftTimeLimitExceeded,
)
from pgtasks.task import TaskSpec
from pgtasks.worker.slots import Attempt, StopReason
from pgtasks.worker.writer import while_busy

log = logging.getLogger("pgtasks.worker")


# -- outcomes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Succeeded:
    result: str | None  # JSON text, serialised once by the runner


@dataclass(frozen=True)
class Failed:
    error: str
    traceback: str | None
    retryable: bool
    delay: float | None = None  # Retry(delay=...): exact; None: the row's backoff


@dataclass(frozen=True)
class Yielded:
    run_at: datetime | None  # None: claimable again at once
    handed_back: bool = False  # a stopping worker gave it back, not the task's own sleep


@dataclass(frozen=True)
class Snoozed:
    """raise Snooze(seconds): the completer hands the task back through snooze_task."""

    seconds: float


@dataclass(frozen=True)
class Parked:
    """The task waits (for an event, or for its children): wait_for_event or
    wait_for_children already ended the attempt."""

    waits_for: str  # what it waits for, for the log: "event 'approved'", "its children"


@dataclass(frozen=True)
class Dropped:
    """Nothing to write: the database already moved on (cancelled, lease lost)."""

    reason: StopReason


Outcome = Succeeded | Failed | Yielded | Snoozed | Parked | Dropped


# -- threads for sync tasks ----------------------------------------------------------------


class DaemonThreads(Executor):
    """Runs each blocking call in its own daemon thread.

    A sync task that ignores `ctx.cancelled` cannot be stopped, only abandoned (after a
    cancel, a timeout or the shutdown grace). A fixed pool would lose a thread to every
    abandoned call until sync tasks queue behind them forever, and its non-daemon threads
    are joined at interpreter exit, so one stuck call would keep a SIGTERMed worker alive.
    The number of live threads is bounded by the worker's thread slots (`threads`) plus
    what it abandoned.
    """

    def __init__(self, name: str = "pgtasks") -> None:
        self._name = name
        self._count = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()

        def target() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # YieldTask is a BaseException: pass it on as is
                future.set_exception(exc)
            else:
                future.set_result(result)

        self._count += 1
        threading.Thread(target=target, name=f"{self._name}-{self._count}", daemon=True).start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing to join: daemon threads end with their call or with the process."""


# -- the runner ----------------------------------------------------------------------------


class Runner:
    def __init__(self, threads: Executor) -> None:
        self.threads = threads

    async def run_blocking(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` in a thread with the caller's contextvars (the task's log routing)."""
        cv = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self.threads, cv.run, fn)

    async def run(self, att: Attempt, spec: TaskSpec | None) -> Outcome:
        """Run the attempt to its outcome, in its span when tracing is on (pgtasks.tracing)."""
        span = tracing.start_attempt(
            task_id=att.task_id,
            task_type=att.task_type,
            queue=att.ctx.queue,
            attempt=att.attempt,
            traceparent=att.traceparent,
            tracestate=att.tracestate,
        )
        if span is None:
            return await self._run(att, spec)
        if att.traceparent is None:
            att.ctx._new_trace = tracing.span_traceparent(span)
        with tracing.current(span):
            outcome = await self._run(att, spec)
        if isinstance(outcome, Failed):
            tracing.end_attempt(span, "failed", outcome.error)
        elif isinstance(outcome, Dropped):
            tracing.end_attempt(span, f"dropped: {outcome.reason}")
        else:
            tracing.end_attempt(span, "succeeded" if isinstance(outcome, Succeeded) else "yielded")
        return outcome

    async def _run(self, att: Attempt, spec: TaskSpec | None) -> Outcome:
        """Run the attempt to its outcome. Buffered logs and progress are written first."""
        ctx = att.ctx
        try:
            if spec is None:  # registry changed since the claim; another worker may know it
                raise PgTasksError(f"task type {att.task_type!r} is not registered here")
            params = spec.parse_params(att.params)
            # The time limit is a plain timer that stops the task like a cancel would:
            # cheaper per task than asyncio.timeout, which matters for short tasks.
            loop = asyncio.get_running_loop()
            timer = loop.call_later(att.timeout, att.stop, StopReason.TIMEOUT)
            soft = None
            if att.soft_after is not None:
                soft = loop.call_later(
                    max(att.soft_after, 0.0), _soft_limit_passed, att, asyncio.current_task()
                )
            try:
                result = await self._call(spec, ctx, params)
            finally:
                timer.cancel()
                if soft is not None:
                    soft.cancel()
            # Buffered logs and progress land before the result; a row another session
            # holds locked only delays them (the lock goes, or the attempt is lost).
            await while_busy(ctx.flush)
            result = _to_json(result)
            # Serialised once, here: a result that is not JSON fails now, as this attempt's
            # error. NaN/Infinity would pass json.dumps but make jsonb reject the whole batch.
            text = (
                None
                if result is None
                else json.dumps(result, allow_nan=False, separators=(",", ":"))
            )
            return Succeeded(text)
        except asyncio.CancelledError:
            reason = att.stop_reason or StopReason.CANCELLED
            if reason is StopReason.TIMEOUT:
                return await self._failed(ctx, f"timed out after {att.timeout:g}s", "", True)
            if reason is StopReason.SHUTDOWN:
                await ctx._flush_quietly()
                return Yielded(None, handed_back=True)
            return Dropped(reason)  # cancelled by a user or lease lost
        except YieldTask as y:
            await ctx._flush_quietly()
            return Yielded(y.run_at)
        except Snooze as z:
            tracing.step_event("pgtasks.snooze", {"pgtasks.snooze.seconds": float(z.seconds)})
            await ctx._flush_quietly()
            return Snoozed(z.seconds)
        except TaskParked as p:
            return Parked(str(p))
        except LeaseLost:
            return Dropped(StopReason.LEASE_LOST)
        except Retry as r:
            return await self._failed(ctx, f"Retry: {r}", "", True, r.delay)
        except (PermanentError, ParamsValidationError) as exc:
            tracing.record_exception(exc)
            return await self._failed(ctx, _describe(exc), traceback.format_exc(), False)
        except Exception as exc:
            tracing.record_exception(exc)
            retryable = not (spec and spec.no_retry_on and isinstance(exc, spec.no_retry_on))
            return await self._failed(ctx, _describe(exc), traceback.format_exc(), retryable)

    @staticmethod
    async def _failed(
        ctx: TaskContext, error: str, tb: str, retryable: bool, delay: float | None = None
    ) -> Failed:
        await ctx._flush_quietly()  # the attempt's last log lines explain the error
        return Failed(error, tb or None, retryable, delay)

    async def _call(self, spec: TaskSpec, ctx: TaskContext, params: Any) -> Any:
        if spec.is_async:
            if ctx.soft_deadline is not None:
                return await _SoftLimited(spec.handler(ctx, params), ctx)
            return await spec.handler(ctx, params)
        loop = asyncio.get_running_loop()
        sync_ctx = SyncTaskContext(ctx, loop)
        result = await self.run_blocking(lambda: spec.handler(sync_ctx, params))
        if asyncio.iscoroutine(result):
            result = await result
        return result


# -- the soft time limit --------------------------------------------------------------------


def _soft_limit_passed(att: Attempt, task: asyncio.Task[Any] | None) -> None:
    """The soft deadline the claim returned has come: mark it on the context (a sync task
    sees it at its next ctx call) and wake an async task, whose _SoftLimited driver turns
    the wake-up into SoftTimeLimitExceeded at the await it is suspended in."""
    ctx = att.ctx
    ctx._soft_passed = True
    if att.is_sync or att.stop_reason is not None or task is None or task.done():
        return
    task.cancel()


class _SoftLimited:
    """Drives an async task's coroutine step by step, as `await coro` would, with one
    difference: the cancel that _soft_limit_passed sends is not thrown into the task as
    CancelledError but as SoftTimeLimitExceeded, and the asyncio task is uncancelled, so
    the task can catch it and go on cleaning up (awaiting included) until the hard limit.
    A cancel for any other reason (the hard limit, a user's cancel, shutdown: all set a
    stop reason first) passes through unchanged."""

    __slots__ = ("_coro", "_ctx")

    def __init__(self, coro: Any, ctx: TaskContext) -> None:
        self._coro = coro
        self._ctx = ctx

    def __await__(self) -> Any:
        coro = self._coro
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = coro.send(value) if error is None else coro.throw(error)
            except StopIteration as stop:
                return stop.value
            value, error = None, None
            try:
                value = yield step
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                stopped = self._ctx.cancel_reason is not None
                if not stopped and task is not None and self._ctx._take_soft_limit():
                    task.uncancel()
                    error = SoftTimeLimitExceeded(
                        f"task {self._ctx.task_id} passed its soft time limit"
                        f" (soft deadline {self._ctx.soft_deadline})"
                    )
                else:
                    error = exc
            except BaseException as exc:  # thrown in by the event loop: pass it on
                error = exc


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _to_json(result: Any) -> Any:
    dump = getattr(result, "model_dump", None)
    return dump(mode="json") if callable(dump) else result
