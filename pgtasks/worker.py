"""The worker: claims tasks for its free slots, runs them, reports back in batches.

One event loop does everything. Async tasks run on it; plain `def` tasks run in a thread
pool. Around the tasks run four small loops:

* claim loop: claims up to the number of free slots, then sleeps until a NOTIFY, a freed
  slot, the next scheduled run_at, or the poll interval (the backstop when LISTEN is off
  or lost);
* completer: successful results are written in batches by one statement, while the
  previous batch is in flight (group commit);
* heartbeat: extends the leases of all running tasks in one statement, and stops the ones
  the database says this worker no longer owns;
* maintenance: rescues tasks whose lease expired and prunes old finished tasks, so no cron
  job is needed.

Database trouble (a restart, a killed connection) is logged and retried with backoff;
nothing is lost because every task the worker cannot report on is rescued by its lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import random
import signal
import socket
import threading
import traceback
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from pgtasks import db
from pgtasks.config import resolve_url
from pgtasks.context import (
    SyncTaskContext,
    TaskContext,
    YieldTask,
    current_task,
    install_task_log_handler,
    uninstall_task_log_handler,
)
from pgtasks.errors import (
    LeaseLost,
    ParamsValidationError,
    PermanentError,
    PgTasksError,
    Retry,
)
from pgtasks.task import Registry, TaskSpec, registry

log = logging.getLogger("pgtasks.worker")

#: Errors that mean "the database is unreachable right now", not "this call is wrong".
TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    # asyncpg can raise this when the server ends a session mid-query (asyncpg#784,
    # #1069): seen here on every server restart under load. The pool drops the broken
    # connection; the call just has to be retried on a fresh one.
    asyncpg.InternalClientError,
)


class DaemonThreads(Executor):
    """Runs each blocking call in its own daemon thread.

    A sync task that ignores `ctx.cancelled` cannot be stopped, only abandoned (after a
    cancel, a timeout or the shutdown grace). A fixed pool would lose a thread to every
    abandoned call until sync tasks queue behind them forever, and its non-daemon threads
    are joined at interpreter exit, so one stuck call would keep a SIGTERMed worker alive.
    The number of live threads is still bounded by the worker's slots plus what it
    abandoned; a thread costs far less than the database round trips around it.
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


#: Pruning deletes finished tasks this many at a time, for at most this long per round.
PRUNE_BATCH = 1000
PRUNE_BUDGET_S = 5.0

#: How long a stopping worker keeps retrying results and hand-backs against a database that
#: stays away, before it exits and leaves those tasks to their leases.
SHUTDOWN_RETRY_LIMIT = 30.0


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


@dataclass
class _Running:
    """A claimed task: its coroutine, its context, and why it was stopped, if it was."""

    task_id: int
    attempt: int
    ctx: TaskContext
    future: asyncio.Task[None] | None = None
    stop_reason: str | None = None


@dataclass
class WorkerStats:
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    yielded: int = 0
    lost: int = 0
    handed_back: int = 0
    claim_errors: int = 0
    claim_calls: int = 0
    finish_calls: int = 0
    rescued: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class Worker:
    """Runs registered tasks from the database. `await worker.run()`; `worker.stop()` drains."""

    def __init__(
        self,
        url: str | None = None,
        *,
        registry: Registry = registry,
        queues: list[str] | None = None,
        concurrency: int = 10,
        poll_interval: float = 1.0,
        listen: bool = True,
        lease: float = 60.0,
        heartbeat_interval: float | None = None,
        rescue_interval: float | None = None,
        shutdown_grace: float = 30.0,
        retention: timedelta | None = timedelta(days=7),
        prune_interval: float = 60.0,
        burst: bool = False,
        worker_id: str | None = None,
        statement_cache_size: int = 100,
    ) -> None:
        if concurrency < 1:
            raise PgTasksError("concurrency must be at least 1")
        if lease <= 0 or poll_interval <= 0:
            raise PgTasksError("lease and poll_interval must be positive")
        self._url = url
        self.registry = registry
        self.queues = queues or None
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.listen = listen
        self.lease = lease
        self.heartbeat_interval = heartbeat_interval or lease / 3
        self.rescue_interval = rescue_interval or max(min(lease / 2, 30.0), 0.2)
        self.shutdown_grace = shutdown_grace
        self.retention = retention
        self.prune_interval = prune_interval
        self.burst = burst
        self.statement_cache_size = statement_cache_size
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.stats = WorkerStats()
        self.threads: Executor = DaemonThreads()
        self._pool: asyncpg.Pool | None = None
        self._core: asyncpg.Pool | None = None
        self._control: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._running: dict[int, _Running] = {}  # claimed and executing
        self._finishing: dict[int, _Running] = {}  # result waiting for the completer
        self._done: list[tuple[int, int, str | None]] = []  # (id, attempt, result JSON)
        self._done_signal = asyncio.Event()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()
        self._task_types = registry.names()

    # -- public --------------------------------------------------------------------------

    @property
    def core(self) -> asyncpg.Pool:
        if self._core is None:
            raise PgTasksError("worker is not running")
        return self._core

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise PgTasksError("worker is not running")
        return self._pool

    def stop(self) -> None:
        """Stop claiming, let running tasks finish within the grace period, hand back the rest."""
        self._stopping.set()
        self._wake.set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a side job on the worker's loop, keeping a reference until it ends."""
        t = asyncio.get_running_loop().create_task(self._guard(coro))
        self._background.add(t)
        t.add_done_callback(self._background.discard)
        return t

    async def run(self, *, install_signal_handlers: bool = False) -> None:
        if not self._task_types:
            raise PgTasksError(
                "no task types are registered; import the module that defines them "
                "(pgtasks worker --app MODULE)"
            )
        loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.stop)
        url = await resolve_url(self._url)
        # Three pools. Tasks (ctx.pool) and their fenced writes use the main one. The claim
        # loop and the completer get connections of their own that skip asyncpg's reset
        # query on release (one round trip per claim and per batch, ~15 % of a drain; these
        # statements leave no session state to reset). Heartbeats get one too, so tasks
        # holding every main connection cannot delay them until their leases run out.
        self._pool = await self._connect_pool(url, self.concurrency + 4)
        self._core = await self._connect_pool(url, 2, reset=_no_reset)
        self._control = await self._connect_pool(url, 1, reset=_no_reset)
        install_task_log_handler()  # `logging` inside a task goes to its task log
        try:
            await self._register()
            loops = [
                self.spawn(self._completer()),
                self.spawn(self._heartbeat_loop()),
                self.spawn(self._maintenance_loop()),
            ]
            if self.listen:
                loops.append(self.spawn(self._listen_loop(url)))
            await self._claim_loop()
            await self._drain()
            for t in loops:
                t.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            with contextlib.suppress(*TRANSIENT):
                await self.pool.execute("SELECT pgtasks.unregister_worker($1)", self.worker_id)
        finally:
            if self._listener is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._listener.close(), 2)
            await self._pool.close()
            self._pool = None
            for extra in (self._core, self._control):
                if extra is not None:
                    await extra.close()
            self._core = self._control = None
            self.threads.shutdown(wait=False, cancel_futures=True)
            if install_signal_handlers:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
            uninstall_task_log_handler()
            self._stopped.set()

    # -- connections ---------------------------------------------------------------------

    async def _connect_pool(
        self,
        url: str,
        size: int,
        *,
        reset: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
    ) -> asyncpg.Pool:
        delay = 0.5
        while True:
            try:
                pool = await asyncpg.create_pool(
                    url,
                    min_size=1,
                    max_size=size,
                    reset=reset,
                    init=db.init_connection,
                    statement_cache_size=self.statement_cache_size,
                )
                assert pool is not None
                return pool
            except TRANSIENT as exc:
                if self._stopping.is_set():
                    raise
                log.warning("database unreachable (%s); retrying in %.1fs", exc, delay)
                await self._sleep(delay)
                delay = min(delay * 2, 10)

    async def _register(self) -> None:
        await self._retrying(
            "register",
            lambda: self.pool.execute(
                "SELECT pgtasks.register_worker($1, $2, $3, $4, $5, $6)",
                self.worker_id,
                socket.gethostname(),
                os.getpid(),
                self.queues,
                self.concurrency,
                timedelta(seconds=self.lease),
            ),
        )
        # The types' policies go to the database, which applies them to every submit
        # (sql/0003). Minimal bridge; the worker rewrite owns this properly.
        policies = [
            (s.name, s.queue, s.max_retries, s.timeout,
             timedelta(seconds=s.retry_delay) if s.retry_delay else None, self.worker_id)
            for s in self.registry
        ]  # fmt: skip
        await self._retrying(
            "register types",
            lambda: self.pool.executemany(
                "SELECT pgtasks.register_task_type(task_type => $1, queue => $2,"
                " max_retries => $3, timeout => $4, backoff_base => $5, worker_id => $6)",
                policies,
            ),
        )

    async def _retrying(self, what: str, call: Any) -> Any:
        """Retry a call through transient database errors with capped backoff.

        Results and hand-backs are retried through a shutdown too, but not forever: after
        SHUTDOWN_RETRY_LIMIT seconds of a database that stays away the worker gives up and
        exits, and the leases hand those tasks to another worker.
        """
        delay = 0.2
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            try:
                return await call()
            except TRANSIENT as exc:
                if self._stopping.is_set() and (
                    what not in ("complete", "hand back")
                    or loop.time() - started > SHUTDOWN_RETRY_LIMIT
                ):
                    if what in ("complete", "hand back"):
                        log.error(
                            "%s: database still unavailable while stopping (%s); giving up, "
                            "leases will hand these tasks to another worker",
                            what,
                            exc,
                        )
                    raise
                log.warning("%s: database unavailable (%s); retrying in %.1fs", what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when the worker is told to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), max(seconds, 0))

    async def _guard(self, coro: Awaitable[Any]) -> Any:
        try:
            return await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pgtasks worker: background job failed")
            return None

    # -- LISTEN --------------------------------------------------------------------------

    async def _listen_loop(self, url: str) -> None:
        """Keep a LISTEN connection open; reconnect with backoff when it drops."""
        delay = 0.5
        while not self._stopping.is_set():
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(url, statement_cache_size=0)
                conn.add_termination_listener(lambda _c, ev=lost: ev.set())
                await conn.add_listener("pgtasks_wakeup", self._on_wakeup)
                await conn.add_listener("pgtasks_cancel", self._on_cancel)
                self._listener = conn
                delay = 0.5
                self._wake.set()  # we may have missed notifications while disconnected
                while not lost.is_set() and not self._stopping.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), 5)
                    if not lost.is_set() and not conn.is_closed():
                        # A silent network drop does not always fire the listener.
                        try:
                            await asyncio.wait_for(conn.execute("SELECT 1"), 5)
                        except (*TRANSIENT, asyncpg.PostgresError):
                            lost.set()
                if lost.is_set():
                    log.warning("LISTEN connection lost; polling until it is back")
            except Exception as exc:
                # Also server errors: a pooler that refuses LISTEN, too many connections...
                # Polling carries on meanwhile, so this is never fatal.
                log.warning("LISTEN unavailable (%s); polling, retrying in %.1fs", exc, delay)
                await self._sleep(delay)
                delay = min(delay * 2, 10)
            finally:
                if self._listener is not None:
                    with contextlib.suppress(Exception):
                        self._listener.terminate()
                    self._listener = None

    def _on_wakeup(self, _conn: object, _pid: int, _channel: str, queue: str) -> None:
        if self.queues is None or queue in self.queues:
            self._wake.set()

    def _on_cancel(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        # '<task_id>:<attempt>' since sql/0004; a bare '<task_id>' before.
        with contextlib.suppress(ValueError):
            self._stop_task(int(payload.split(":", 1)[0]), "cancelled")

    # -- claiming ------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        backoff = 0.2
        rechecked = False
        while not self._stopping.is_set():
            self._wake.clear()
            free = self.concurrency - len(self._running)
            claimed = 0
            wait_for = self.poll_interval
            if free > 0:
                try:
                    assert self._core is not None
                    rows = await self._core.fetch(
                        "SELECT * FROM pgtasks.claim_tasks($1, $2, $3, $4, $5)",
                        self.worker_id,
                        self.queues,
                        free,
                        timedelta(seconds=self.lease),
                        self._task_types,
                    )
                    backoff = 0.2
                except Exception as exc:
                    # Nothing here may end the worker (a server-side error, a statement
                    # timeout, a schema being migrated, a driver bug): back off and retry.
                    self.stats.claim_errors += 1
                    if isinstance(exc, (*TRANSIENT, asyncpg.PostgresError)):
                        log.warning("claim failed (%s); retrying in %.1fs", exc, backoff)
                    else:
                        log.exception("claim failed; retrying in %.1fs", backoff)
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, 10)
                    continue
                for row in rows:
                    self._start(row)
                claimed = len(rows)
                self.stats.claimed += claimed
                self.stats.claim_calls += 1
                if claimed == free or (claimed and not rechecked):
                    # A full batch: more may be ready (the loop waits for a free slot first).
                    # A partial one: look once more, so a task committed while we claimed,
                    # whose wake-up the database may have skipped, is not left to the poll.
                    rechecked = claimed < free
                    continue
                rechecked = False
                wait_for = await self._idle_wait()
                if wait_for is None:  # burst mode: nothing left to do
                    if not self._running and not self._finishing:
                        return
                    wait_for = self.poll_interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_for)

    async def _idle_wait(self) -> float | None:
        """Seconds to sleep when no ready work is left: until the next run_at, at most a poll."""
        try:
            assert self._core is not None
            row = await self._core.fetchrow(
                "SELECT pgtasks.next_run_at($1, $2) - now() AS gap", self.queues, self._task_types
            )
        except (*TRANSIENT, asyncpg.PostgresError):  # a failed peek only means a plain poll
            return self.poll_interval
        gap = row["gap"] if row else None
        if gap is None:
            return None if self.burst else self.poll_interval
        return min(max(gap.total_seconds(), 0.0), self.poll_interval)

    def _start(self, row: asyncpg.Record) -> None:
        spec = self.registry.get(row["task_type"])
        ctx = TaskContext(
            self,
            task_id=row["id"],
            attempt=row["attempt"],
            task_type=row["task_type"],
            queue=row["queue"],
            retry_count=row["retry_count"],
            max_retries=row["max_retries"],
            has_steps=row["has_steps"],
        )
        run = _Running(row["id"], row["attempt"], ctx)
        self._running[run.task_id] = run
        coro = self._execute(run, spec, row["params"], _seconds(row["timeout"]))
        # Guarded: an error while reporting the outcome (the database refusing even the
        # failure record) is logged, not left as an unretrieved task exception; the lease
        # hands such a task on.
        run.future = asyncio.get_running_loop().create_task(self._guard(coro))

    def _stop_task(self, task_id: int, reason: str) -> None:
        run = self._running.get(task_id)
        if run is None:
            return
        run.stop_reason = run.stop_reason or reason
        run.ctx._mark_cancelled(reason)
        if run.future is not None and not run.future.done():
            run.future.cancel()

    # -- running one task ----------------------------------------------------------------

    async def _execute(self, run: _Running, spec: TaskSpec | None, raw: Any, limit: float) -> None:
        token = current_task.set(run.ctx)
        try:
            if spec is None:  # registry changed since the claim; another worker may know it
                raise PgTasksError(f"task type {run.ctx.task_type!r} is not registered here")
            params = spec.parse_params(raw)
            # The time limit is a plain timer that stops the task like a cancel would:
            # cheaper per task than asyncio.timeout, which matters for short tasks.
            timer = asyncio.get_running_loop().call_later(
                limit, self._stop_task, run.task_id, "timeout"
            )
            try:
                result = await self._call(spec, run.ctx, params)
            finally:
                timer.cancel()
            await run.ctx.flush()  # buffered logs and progress land before the result
            result = _to_json(result)
            # Serialised once, here: a result that is not JSON fails now, as this attempt's
            # error. NaN/Infinity would pass json.dumps but make jsonb reject the whole batch.
            text = (
                None
                if result is None
                else json.dumps(result, allow_nan=False, separators=(",", ":"))
            )
        except asyncio.CancelledError:
            if run.stop_reason == "timeout":
                await self._fail(run, spec, f"timed out after {limit:g}s", "", retryable=True)
            else:
                await self._after_cancel(run)
        except YieldTask as y:
            await self._yield(run, y.run_at)
        except LeaseLost:
            self.stats.lost += 1
            log.info("task %s: lease lost (attempt %s); dropping it", run.task_id, run.attempt)
        except Retry as r:
            await self._fail(run, spec, f"Retry: {r}", "", retryable=True, delay=r.delay)
        except (PermanentError, ParamsValidationError) as exc:
            await self._fail(run, spec, _describe(exc), traceback.format_exc(), retryable=False)
        except Exception as exc:
            retryable = not (spec and spec.no_retry_on and isinstance(exc, spec.no_retry_on))
            await self._fail(run, spec, _describe(exc), traceback.format_exc(), retryable=retryable)
        else:
            self._finishing[run.task_id] = run
            self._done.append((run.task_id, run.attempt, text))
            self._done_signal.set()
        finally:
            current_task.reset(token)
            run.ctx._close()  # late progress/log calls (e.g. from abandoned threads) are dropped
            self._running.pop(run.task_id, None)
            self._wake.set()

    async def _call(self, spec: TaskSpec, ctx: TaskContext, params: Any) -> Any:
        if spec.is_async:
            return await spec.handler(ctx, params)
        loop = asyncio.get_running_loop()
        sync_ctx = SyncTaskContext(ctx, loop)
        cv = contextvars.copy_context()
        result = await loop.run_in_executor(
            self.threads, lambda: cv.run(spec.handler, sync_ctx, params)
        )
        if asyncio.iscoroutine(result):
            result = await result
        return result

    async def _after_cancel(self, run: _Running) -> None:
        """The coroutine was cancelled: decide what the database should hear, if anything."""
        reason = run.stop_reason or "cancelled"
        if reason == "shutdown":
            await self._yield(run, None, handed_back=True)
        else:  # cancelled by a user or lease lost: the database already moved on
            self.stats.lost += reason == "lease lost"
            log.info("task %s stopped: %s", run.task_id, reason)

    async def _fail(
        self,
        run: _Running,
        spec: TaskSpec | None,
        error: str,
        tb: str,
        *,
        retryable: bool,
        delay: float | None = None,
    ) -> None:
        await run.ctx._flush_quietly()  # the attempt's last log lines explain the error
        # PostgreSQL text cannot hold NUL; an error message with one must still be recorded.
        error, tb = error.replace("\x00", "\\x00"), tb.replace("\x00", "\\x00")
        try:
            status = await self._retrying(
                "fail",
                lambda: self.pool.fetchval(
                    "SELECT pgtasks.fail_task($1, $2, $3, $4, $5, $6)",
                    run.task_id,
                    run.attempt,
                    error,
                    tb or None,
                    retryable,
                    timedelta(seconds=delay) if delay is not None else None,
                ),
            )
        except asyncpg.PostgresError as exc:
            if getattr(exc, "sqlstate", "") == "PT002":
                self.stats.lost += 1
                return
            raise
        if status == "FAILED":
            self.stats.failed += 1
            log.warning("task %s failed: %s", run.task_id, error)
        else:
            self.stats.retried += 1
            log.info("task %s will retry: %s", run.task_id, error)

    async def _yield(
        self, run: _Running, run_at: datetime | None, *, handed_back: bool = False
    ) -> None:
        await run.ctx._flush_quietly()
        try:
            await self._retrying(
                "hand back",
                lambda: self.pool.execute(
                    "SELECT pgtasks.yield_task($1, $2, coalesce($3, now()))",
                    run.task_id,
                    run.attempt,
                    run_at,
                ),
            )
        except asyncpg.PostgresError as exc:
            if getattr(exc, "sqlstate", "") == "PT002":
                return
            raise
        if handed_back:
            self.stats.handed_back += 1
        else:
            self.stats.yielded += 1

    # -- batched completion --------------------------------------------------------------

    async def _completer(self) -> None:
        # Must outlive any error: a dead completer would leave every later result unwritten
        # while heartbeats keep those tasks RUNNING, i.e. stuck for the worker's lifetime.
        while True:
            await self._done_signal.wait()
            self._done_signal.clear()
            try:
                await self._flush_done()
            except Exception:
                log.exception("completer failed; its tasks are left to lease expiry and rescue")
                for task_id, _, _ in self._done:
                    self._finishing.pop(task_id, None)
                self._done = []

    async def _flush_done(self) -> None:
        while self._done:
            batch, self._done = self._done, []
            ids = [b[0] for b in batch]
            try:
                rejected = await self._finish_batch(batch)
            except asyncio.CancelledError:
                self._done = batch + self._done
                raise
            finally:
                for task_id in ids:
                    self._finishing.pop(task_id, None)
            self.stats.lost += len(rejected)
            if rejected:
                log.info(
                    "results dropped for tasks this worker no longer owns: %s", sorted(rejected)
                )

    async def _finish_batch(self, batch: list[tuple[int, int, str | None]]) -> set[int]:
        """Write results in one statement; return the ids the database rejected (fenced).

        A result the database refuses (e.g. a string holding \\u0000, which jsonb cannot
        store) would fail the whole batch every time. So on such an error the batch is
        split, and the one task whose result cannot be stored fails with that error,
        instead of the error stopping every other task's result.
        """
        try:
            rows = await self._retrying(
                "complete",
                lambda: self.core.fetch(
                    # Results travel as JSON text: a list result passed as a jsonb[]
                    # element would be read as a nested array dimension and mangled.
                    "SELECT * FROM pgtasks.finish_tasks($1, $2, $3::text[]::jsonb[])",
                    [b[0] for b in batch],
                    [b[1] for b in batch],
                    [b[2] for b in batch],  # already JSON text
                ),
            )
        except asyncpg.PostgresError as exc:
            if len(batch) > 1:
                rejected: set[int] = set()
                for item in batch:
                    rejected |= await self._finish_batch([item])
                return rejected
            run = self._finishing.get(batch[0][0])
            if run is None:
                raise
            log.error("task %s: its result could not be stored: %s", run.task_id, exc)
            await self._fail(
                run, None, f"result could not be stored: {_describe(exc)}", "", retryable=False
            )
            return set()
        rejected = {r[0] for r in rows}
        self.stats.finish_calls += 1
        self.stats.succeeded += len(batch) - len(rejected)
        return rejected

    # -- leases --------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        # This loop must outlive any error: if it died, every lease would run out while the
        # tasks go on running here, and rescue would start them a second time elsewhere.
        failing = False
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            owned = list(self._running.values()) + list(self._finishing.values())
            try:
                if failing:  # back after an outage: the registry row may have been swept
                    await self._register()
                assert self._control is not None
                rows = await self._control.fetch(
                    "SELECT * FROM pgtasks.heartbeat($1, $2, $3, $4)",
                    self.worker_id,
                    [r.task_id for r in owned],
                    [r.attempt for r in owned],
                    timedelta(seconds=self.lease),
                )
            except TRANSIENT as exc:
                failing = True
                log.warning("heartbeat failed (%s); leases expire if this persists", exc)
                continue
            except Exception:
                failing = True
                log.exception("heartbeat failed; retrying")
                continue
            if failing:
                log.info("heartbeat is back")
                failing = False
            for r in rows:
                self._stop_task(r[0], "lease lost")

    async def _maintenance_loop(self) -> None:
        next_prune = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.rescue_interval * random.uniform(0.8, 1.2))
            try:
                rescued = await self.pool.fetchval("SELECT pgtasks.rescue_expired()")
                if rescued:
                    self.stats.rescued += rescued
                    log.warning("rescued %s task(s) whose worker stopped heartbeating", rescued)
                    self._wake.set()
                if self.retention is not None and loop.time() >= next_prune:
                    next_prune = loop.time() + self.prune_interval
                    await self._prune()
            except TRANSIENT as exc:
                log.warning("maintenance skipped (%s)", exc)
            except Exception:  # keep rescuing: no other process will
                log.exception("maintenance failed; trying again later")

    async def _prune(self) -> int:
        """Delete finished tasks past the retention in small batches (no long locks), as many
        batches as fit in a few seconds, so pruning keeps up with a busy queue."""
        loop = asyncio.get_running_loop()
        budget_end = loop.time() + PRUNE_BUDGET_S
        total = 0
        while not self._stopping.is_set():
            deleted = await self.pool.fetchval(
                "SELECT pgtasks.prune_finished($1, $2)", self.retention, PRUNE_BATCH
            )
            total += deleted
            if deleted < PRUNE_BATCH or loop.time() >= budget_end:
                return total
            await asyncio.sleep(0)  # let claims and completions through between batches
        return total

    # -- shutdown ------------------------------------------------------------------------

    async def _drain(self) -> None:
        """Give running tasks the grace period, then cancel and hand back what is left."""
        pending = [r.future for r in self._running.values() if r.future is not None]
        if pending:
            log.info(
                "stopping: waiting up to %gs for %d task(s)", self.shutdown_grace, len(pending)
            )
            _, still = await asyncio.wait(pending, timeout=self.shutdown_grace)
            for run in list(self._running.values()):
                self._stop_task(run.task_id, "shutdown")
            if still:
                await asyncio.wait(still, timeout=10)
        await self._flush_done()


async def _no_reset(_conn: asyncpg.Connection) -> None:
    """Release without asyncpg's reset query: the worker's own statements set no state."""


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _to_json(result: Any) -> Any:
    dump = getattr(result, "model_dump", None)
    return dump(mode="json") if callable(dump) else result
