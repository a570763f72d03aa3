"""The tasks a worker holds, and how many more it may take.

A task is held from its claim until the database has heard its outcome: while it runs
(`running`) and while its result waits in the completer's batch (`finishing`). The lease
keeper extends the lease of everything held; the producer claims only into free slots.

Two bounds: `concurrency` slots for all tasks, and at most `threads` of them for sync
(`def`) tasks, which each need a thread: a hundred coroutines are cheap, a hundred threads
are not. Claims in flight reserve their slots first, so the producer and the completer
(which claims in the same round trip as it finishes) never take more than fits.

Prefetch: while tasks are short, up to `prefetch` more tasks are claimed than there are free
slots and wait here (`buffer`) for a slot, so a freed slot starts its next task at once
instead of waiting for a round trip (measured: about twice the drain rate at concurrency
10). A buffered task keeps its lease like a running one. Prefetch switches itself off while
tasks run longer than PREFETCH_MAX_TASK_S on average, and a task that waited longer than
PREFETCH_MAX_WAIT_S for a slot is handed back, so no task waits behind long ones.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pgtasks.context import TaskContext, Writer

#: Prefetch only while tasks average less than this (seconds)...
PREFETCH_MAX_TASK_S = 0.05
#: ...and hand back a prefetched task that waited longer than this for a slot.
PREFETCH_MAX_WAIT_S = 2.0


class StopReason(StrEnum):
    """Why a worker stopped an attempt before it ended by itself. The first reason sticks
    (Attempt.stop) and decides what the runner records: a timeout is a failure, a shutdown
    hands the task back, and after a cancel or a lost lease nothing is written (the
    database has already moved on). Task code sees it as `ctx.cancel_reason`."""

    CANCELLED = "cancelled"  # by a user (pgtasks.cancel_task), confirmed by the database
    LEASE_LOST = "lease lost"  # rescued, cancelled or re-claimed: another attempt owns it
    TIMEOUT = "timeout"  # the task type's time limit
    SHUTDOWN = "shutdown"  # the worker is stopping and the grace period is over


@dataclass
class Attempt:
    """One claimed attempt: its context, the asyncio task running it, why it was stopped."""

    task_id: int
    attempt: int
    # The claim's secret: every call about the attempt presents it. Out of repr and logs.
    lease_token: str = field(repr=False)
    task_type: str
    params: Any
    timeout: float
    is_sync: bool
    ctx: TaskContext
    #: Seconds after the claim at which the soft limit passes (None: no soft limit): the
    #: claim's soft_deadline, read against its deadline, both on the database's clock.
    soft_after: float | None = None
    future: asyncio.Task[None] | None = None
    stop_reason: StopReason | None = None
    # The submitter's W3C trace context (tasks.traceparent, tasks.tracestate), for the
    # attempt's span.
    traceparent: str | None = None
    tracestate: str | None = None

    @classmethod
    def claimed(cls, row: Any, *, writer: Writer, is_sync: bool, **tools: Any) -> Attempt:
        """The attempt of a claim_tasks row; `tools` go to its TaskContext (run_blocking, pool)."""
        ctx = TaskContext(
            task_id=row["id"],
            attempt=row["attempt"],
            lease_token=row["lease_token"],
            task_type=row["task_type"],
            queue=row["queue"],
            retry_count=row["retry_count"],
            max_retries=row["max_retries"],
            has_steps=row["has_steps"],
            writer=writer,
            soft_deadline=row.get("soft_deadline"),
            **tools,
        )
        soft = row.get("soft_deadline")
        timeout = row["timeout"].total_seconds()
        return cls(
            task_id=row["id"],
            attempt=row["attempt"],
            lease_token=row["lease_token"],
            task_type=row["task_type"],
            params=row["params"],
            timeout=timeout,
            is_sync=is_sync,
            ctx=ctx,
            soft_after=None if soft is None else timeout - (row["deadline"] - soft).total_seconds(),
            traceparent=row.get("traceparent"),
            tracestate=row.get("tracestate"),
        )

    def stop(self, reason: StopReason) -> None:
        """Stop the attempt; the first reason sticks."""
        self.stop_reason = self.stop_reason or reason
        self.ctx._mark_cancelled(reason)
        if self.future is not None and not self.future.done():
            self.future.cancel()


class Slots:
    def __init__(self, concurrency: int, threads: int, prefetch: int = 0) -> None:
        self.concurrency = concurrency
        self.threads = min(threads, concurrency)
        self.prefetch = prefetch
        self.running: dict[int, Attempt] = {}
        self.finishing: dict[int, str] = {}  # task_id -> lease token, result not yet written
        self.buffer: dict[int, tuple[Any, float]] = {}  # prefetched: task_id -> (row, when)
        self.avg_task_s = 0.0  # moving average of how long an attempt runs
        self._sync_running = 0
        self._reserved = 0
        self._reserved_threads = 0
        # Claims paused while the lease keeper reconciles (hand_back_unheld): a claim landing
        # meanwhile would bring rows the held list it sent does not name.
        self._paused = 0
        self._settled = asyncio.Event()  # set whenever no claim is in flight
        self._settled.set()

    # -- bounds --------------------------------------------------------------------------

    def free(self) -> int:
        """How many tasks a claim may take now: free slots, plus prefetch room."""
        if self._paused:
            return 0
        extra = self.prefetch if self.avg_task_s <= PREFETCH_MAX_TASK_S else 0
        return self.concurrency + extra - len(self.running) - len(self.buffer) - self._reserved

    def has_room(self) -> bool:
        """A slot to start a task in now (not counting prefetch)."""
        return len(self.running) < self.concurrency

    def free_threads(self) -> int:
        return self.threads - self._sync_running - self._reserved_threads

    def reserve(self, n: int, *, threads: int = 0) -> None:
        """Hold `n` slots (of which up to `threads` for sync tasks) for a claim in flight."""
        self._reserved += n
        self._settled.clear()
        self._reserved_threads += threads

    def release(self, n: int, *, threads: int = 0) -> None:
        self._reserved -= n
        self._reserved_threads -= threads
        if not self._reserved:
            self._settled.set()

    # -- pausing claims ------------------------------------------------------------------

    async def pause_claims(self, timeout: float) -> bool:
        """Stop new claims and wait up to `timeout` s for those in flight to land. False
        (claims resumed) if they did not: one retried through an outage may land later."""
        self._paused += 1
        while self._reserved:
            self._settled.clear()
            try:
                await asyncio.wait_for(self._settled.wait(), timeout)
            except TimeoutError:
                self._paused -= 1
                return False
        return True

    def resume_claims(self) -> None:
        self._paused -= 1

    # -- holdings ------------------------------------------------------------------------

    def add(self, att: Attempt) -> None:
        self.running[att.task_id] = att
        self._sync_running += att.is_sync

    def ended(self, att: Attempt, seconds: float | None = None) -> None:
        if self.running.pop(att.task_id, None) is not None:
            self._sync_running -= att.is_sync
        if seconds is not None:
            self.avg_task_s += (seconds - self.avg_task_s) * 0.05

    # -- prefetched ----------------------------------------------------------------------

    def hold(self, row: Any) -> None:
        self.buffer[row["id"]] = (row, time.monotonic())

    def next_held(self) -> Any | None:
        if not self.buffer:
            return None
        task_id = next(iter(self.buffer))
        return self.buffer.pop(task_id)[0]

    def stale(self, *, everything: bool = False) -> list[Any]:
        """Prefetched rows that waited too long for a slot (all of them when stopping)."""
        cutoff = time.monotonic() - PREFETCH_MAX_WAIT_S
        old = [t for t, (_, at) in self.buffer.items() if everything or at < cutoff]
        if old and not everything:
            # Slots stay busy for seconds: tasks are long (maybe all of them since start,
            # before any ended to move the average). Prefetch stays off until short tasks
            # bring the average back down, instead of claiming and handing back in a loop.
            self.avg_task_s = max(self.avg_task_s, 2 * PREFETCH_MAX_TASK_S)
        return [self.buffer.pop(t)[0] for t in old]

    def owned(self) -> list[tuple[int, str]]:
        """(task_id, lease_token) of every task whose lease this worker must keep."""
        held = [(a.task_id, a.lease_token) for a in self.running.values()]
        held += [(t, k) for t, k in self.finishing.items() if t not in self.running]
        held += [(t, row["lease_token"]) for t, (row, _) in self.buffer.items()]
        return held

    def holds(self, task_id: int) -> bool:
        """The task runs here, waits here for a slot, or its result waits to be written."""
        return task_id in self.running or task_id in self.buffer or task_id in self.finishing

    def stop(self, task_id: int, reason: StopReason) -> bool:
        """Stop a task that runs (or waits) here: the lease keeper calls it for each task a
        heartbeat reports lost. Never for a notification alone: any role may send one."""
        if self.buffer.pop(task_id, None) is not None:
            return True  # never started: nothing to stop, the database already moved on
        att = self.running.get(task_id)
        if att is None:
            return False
        att.stop(reason)
        return True

    @property
    def idle(self) -> bool:
        return not self.running and not self.finishing and not self.buffer
