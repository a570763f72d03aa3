"""Completer: owns every outcome write of a worker.

* Results are written in batches by one statement, while the previous batch is in flight
  (group commit): a busy worker writes hundreds of results per round trip. The same
  statement claims work for the slots those results freed (finish_and_claim), so a busy
  worker spends one round trip per batch on "results in, work out", not two.
* A batch the database refuses (one result jsonb cannot store, e.g. a string holding
  \\u0000) is split until the one poisoned result is found; that task fails with the reason
  and every other result is written.
* Failures and hand-backs (yield, shutdown) are written one by one, retried through
  database outages and lock timeouts (another session holding the task's row); a write the
  database fences off (LeaseLost) changes nothing and only counts as lost. Batches are
  retried through both as well.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import TYPE_CHECKING

import asyncpg

from pgtasks import queries
from pgtasks.db import DATABASE_ERRORS, TRANSIENT, translated
from pgtasks.errors import LeaseLost, PgTasksError
from pgtasks.worker.base import Service, WorkerStats, retrying
from pgtasks.worker.runner import (
    Dropped,
    Failed,
    Outcome,
    Parked,
    Snoozed,
    Succeeded,
    Yielded,
    _describe,
)
from pgtasks.worker.slots import Slots, StopReason

if TYPE_CHECKING:
    from pgtasks.worker.producer import Producer

log = logging.getLogger("pgtasks.worker")

Result = tuple[int, str, str | None]  # task_id, lease token, result as JSON text

#: What a trace record may meet without the outcome after it being affected: a refusal (the
#: attempt is no longer ours) or a database that is away (the outcome's write retries).
_NOT_RECORDED: tuple[type[BaseException], ...] = (PgTasksError, *DATABASE_ERRORS)


class Completer(Service):
    name = "completer"

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        slots: Slots,
        stats: WorkerStats,
        stopping: asyncio.Event,
        claimer: Producer | None = None,
    ) -> None:
        super().__init__()
        self.pool = pool
        self.slots = slots
        self.stats = stats
        self.stopping = stopping
        self.claimer = claimer  # claims for freed slots in the same round trip, if set
        self._batch: list[Result] = []
        self._signal = asyncio.Event()
        self._in_flight = 0
        self._quiet = asyncio.Event()  # no batch in flight
        self._quiet.set()

    # -- entry point ---------------------------------------------------------------------

    async def record(
        self, task_id: int, lease_token: str, outcome: Outcome, new_trace: str | None = None
    ) -> None:
        """Write (or queue) an attempt's outcome. Successes return at once: they are batched.

        `new_trace`: the traceparent of the attempt's span when the task had none (tracing
        on, submitted outside any trace); recorded first when the outcome leads to another
        attempt, so that attempt joins this one's trace (pgtasks.tracing)."""
        if isinstance(outcome, Succeeded):
            self.slots.finishing[task_id] = lease_token
            self._batch.append((task_id, lease_token, outcome.result))
            self._signal.set()
            return
        if new_trace is not None and isinstance(outcome, Failed | Yielded | Snoozed):
            await self._record_trace(task_id, lease_token, new_trace)
        if isinstance(outcome, Failed):
            await self.fail(task_id, lease_token, outcome)
        elif isinstance(outcome, Yielded):
            await self.hand_back(task_id, lease_token, outcome)
        elif isinstance(outcome, Snoozed):
            await self.snooze(task_id, lease_token, outcome)
        elif isinstance(outcome, Parked):
            self.stats.yielded += 1  # the wait parked it; nothing left to write
            log.info("task %s waits for %s", task_id, outcome.waits_for)
        elif isinstance(outcome, Dropped):
            self.stats.lost += outcome.reason is StopReason.LEASE_LOST
            log.info("task %s stopped: %s", task_id, outcome.reason)

    @property
    def pending(self) -> int:
        return len(self._batch)

    # -- batched results -----------------------------------------------------------------

    async def run(self) -> None:
        """One write loop: the results that finish while a batch is in flight form the next
        one. (Two loops, each on its own core connection, made no difference we could tell
        from noise at concurrency 10 on a 2-core machine, and cost server CPU per job at
        concurrency 100: smaller batches.)"""
        # Must outlive any error: a dead completer would leave every later result unwritten
        # while heartbeats keep those tasks RUNNING, i.e. stuck for the worker's lifetime.
        while True:
            await self._signal.wait()
            # Let the tasks already scheduled (e.g. prefetched ones just started by a freed
            # slot) run first: a short task's result then joins this batch, not the next.
            await asyncio.sleep(0)
            if not self._batch:
                self._signal.clear()
                continue
            try:
                await self._write_batch()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("completer failed; its tasks are left to lease expiry and rescue")

    async def run_once(self) -> None:
        """Write every queued result, and wait for the batches already in flight (so a
        stopping worker's last call does not race the loops' writes)."""
        while self._batch or self._in_flight:
            if self._batch:
                await self._write_batch()
            else:
                await self._quiet.wait()

    async def _write_batch(self) -> None:
        batch, self._batch = self._batch, []
        self._signal.clear()
        self._in_flight += 1
        self._quiet.clear()
        cancelled = False
        try:
            rejected = await self._finish(batch)
        except asyncio.CancelledError:
            cancelled = True
            self._batch = batch + self._batch  # still held: the lease keeper keeps them
            raise
        finally:
            if not cancelled:  # written, or given up on (then the lease hands them on)
                for task_id, _, _ in batch:
                    self.slots.finishing.pop(task_id, None)
            self._in_flight -= 1
            if not self._in_flight:
                self._quiet.set()
        self.stats.lost += len(rejected)
        if rejected:
            log.info(
                "results not stored: lease lost, or refused by the database (a result over "
                "max_result_bytes fails its task with the reason): %s",
                sorted(rejected),
            )

    async def _finish(self, batch: list[Result]) -> set[int]:
        """Write results in one statement; return the ids the database rejected (fenced)."""
        claimer = self.claimer
        plan = claimer.plan_piggyback() if claimer is not None else None
        if claimer is None or plan is None:
            return await self._finish_only(batch)
        n, _threads, types = plan

        async def finish_and_claim() -> list[asyncpg.Record]:
            try:
                return await self.pool.fetch(
                    queries.FINISH_AND_CLAIM,
                    claimer.worker_id,
                    [b[0] for b in batch],
                    [b[1] for b in batch],
                    [b[2] for b in batch],
                    n,
                    claimer.queues,
                    claimer.lease,
                    types,
                )
            except TRANSIENT:
                claimer.on_claim_lost()  # it may have claimed, its answer lost: reconcile
                raise

        rows = []
        try:
            rows = await retrying(
                "complete", finish_and_claim, self.stopping, through_shutdown=True
            )
        except asyncpg.PostgresError as exc:
            return await self._split(batch, exc)
        finally:
            claimed = [r for r in rows if r["rejected_task_id"] is None]
            claimer.claimed_by_completer(plan, claimed)
        rejected = {r["rejected_task_id"] for r in rows if r["rejected_task_id"] is not None}
        self.stats.finish_calls += 1
        self.stats.finish_batch.observe(len(batch))
        self.stats.succeeded += len(batch) - len(rejected)
        return rejected

    async def _finish_only(self, batch: list[Result]) -> set[int]:
        try:
            rows = await retrying(
                "complete",
                lambda: self.pool.fetch(
                    queries.FINISH_TASKS,
                    [b[0] for b in batch],
                    [b[1] for b in batch],
                    [b[2] for b in batch],
                ),
                self.stopping,
                through_shutdown=True,
            )
        except asyncpg.PostgresError as exc:
            return await self._split(batch, exc)
        rejected = {r[0] for r in rows}
        self.stats.finish_calls += 1
        self.stats.finish_batch.observe(len(batch))
        self.stats.succeeded += len(batch) - len(rejected)
        return rejected

    async def _split(self, batch: list[Result], exc: asyncpg.PostgresError) -> set[int]:
        """A poisoned batch: halve it until the one result the database refuses is alone."""
        if len(batch) > 1:
            mid = len(batch) // 2
            return await self._finish_only(batch[:mid]) | await self._finish_only(batch[mid:])
        task_id, lease_token, _ = batch[0]
        log.error("task %s: its result could not be stored: %s", task_id, exc)
        error = f"result could not be stored: {_describe(exc)}"
        await self.fail(task_id, lease_token, Failed(error, None, retryable=False))
        return set()

    # -- failures and hand-backs ---------------------------------------------------------

    async def _record_trace(self, task_id: int, lease_token: str, traceparent: str) -> None:
        """pgtasks.record_trace, best effort: a trace is not worth an outcome, so a refusal
        or a lost connection is logged and the outcome is written as it would be without."""
        try:
            async with translated():
                await self.pool.fetchval(queries.RECORD_TRACE, task_id, lease_token, traceparent)
        except _NOT_RECORDED as exc:
            log.debug("task %s: its trace was not recorded: %s", task_id, exc)

    async def fail(self, task_id: int, lease_token: str, outcome: Failed) -> None:
        # PostgreSQL text cannot hold NUL; an error message with one must still be recorded.
        error = outcome.error.replace("\x00", "\\x00")
        tb = outcome.traceback.replace("\x00", "\\x00") if outcome.traceback else None
        delay = timedelta(seconds=outcome.delay) if outcome.delay is not None else None
        try:
            async with translated():
                status = await retrying(
                    "fail",
                    lambda: self.pool.fetchval(
                        queries.FAIL_TASK,
                        task_id,
                        lease_token,
                        error,
                        tb,
                        outcome.retryable,
                        delay,
                    ),
                    self.stopping,
                    through_shutdown=True,
                )
        except LeaseLost:
            self.stats.lost += 1
            return
        if status == "FAILED":
            self.stats.failed += 1
            log.warning("task %s failed: %s", task_id, error)
        else:
            self.stats.retried += 1
            log.info("task %s will retry: %s", task_id, error)

    async def hand_back(self, task_id: int, lease_token: str, outcome: Yielded) -> None:
        try:
            async with translated():
                await retrying(
                    "hand back",
                    lambda: self.pool.execute(
                        queries.YIELD_TASK, task_id, lease_token, outcome.run_at
                    ),
                    self.stopping,
                    through_shutdown=True,
                )
        except LeaseLost:
            return
        if outcome.handed_back:
            self.stats.handed_back += 1
        else:
            self.stats.yielded += 1

    async def snooze(self, task_id: int, lease_token: str, outcome: Snoozed) -> None:
        try:
            async with translated():
                status = await retrying(
                    "snooze",
                    lambda: self.pool.fetchval(
                        queries.SNOOZE_TASK,
                        task_id,
                        lease_token,
                        timedelta(seconds=outcome.seconds),
                    ),
                    self.stopping,
                    through_shutdown=True,
                )
        except LeaseLost:
            return
        if status == "FAILED":
            self.stats.failed += 1
            log.warning("task %s failed: snoozed more often than settings.max_snoozes", task_id)
        else:
            self.stats.yielded += 1
