"""Producer: claims tasks into the worker's free slots.

It claims whenever it is woken (a NOTIFY from the notifier, a freed slot, a rescue) and
otherwise sleeps until the next scheduled run_at, at most `poll_interval` (the backstop
when LISTEN is off or lost). Sync task types are claimed only while thread slots are free:
when they are full, only async types are claimed (the claim's task_types argument).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import timedelta

import asyncpg

from pgtasks import queries
from pgtasks.db import DATABASE_ERRORS, TRANSIENT
from pgtasks.worker.base import Service, WorkerStats, sleep_or_stop
from pgtasks.worker.slots import Slots

log = logging.getLogger("pgtasks.worker")


class Producer(Service):
    name = "producer"

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        worker_id: str,
        slots: Slots,
        async_types: list[str],
        sync_types: list[str],
        on_claimed: Callable[[list[asyncpg.Record]], None],
        stats: WorkerStats,
        before_claim: Callable[[], object] | None = None,
        stopping: asyncio.Event,
        queues: list[str] | None = None,
        lease: float | None = None,
        poll_interval: float = 1.0,
        burst: bool = False,
    ) -> None:
        super().__init__()
        self.pool = pool
        self.worker_id = worker_id
        self.slots = slots
        self.async_types = sorted(async_types)
        self.sync_types = sorted(sync_types)
        self.all_types = sorted(async_types + sync_types)
        self.on_claimed = on_claimed
        self.before_claim = before_claim or (lambda: None)
        self.stats = stats
        self.stopping = stopping
        self.queues = queues
        self.lease = timedelta(seconds=lease) if lease is not None else None
        self.poll_interval = poll_interval
        self.burst = burst
        #: The wake-up tags of `queues` (pgtasks.queue_tag); None: take every wake-up.
        self.wakeup_tags: set[str] | None = None
        self._wake = asyncio.Event()
        #: Called when a claim fails with a connection error: it may have committed with
        #: its answer lost, so the lease keeper reconciles (lease_keeper.py).
        self.on_claim_lost: Callable[[], object] = lambda: None

    def wake(self) -> None:
        self._wake.set()

    def wants(self, tag: str) -> bool:
        """A wake-up with this tag may concern this worker ('' = any queue). Tags of other
        queues are ignored; a tag shared by chance only costs one empty claim."""
        return not tag or self.wakeup_tags is None or tag in self.wakeup_tags

    async def load_wakeup_tags(self) -> None:
        """Ask the database for the tags of this worker's queues (none: every queue)."""
        if self.queues is None:
            self.wakeup_tags = None
            return
        tags = await self.pool.fetchval(queries.QUEUE_TAGS, self.queues)
        self.wakeup_tags = set(tags)

    # -- what to claim -------------------------------------------------------------------

    async def claim(self, n: int, threads: int, types: list[str]) -> list[asyncpg.Record]:
        """Claim up to n tasks of `types`, their slots reserved meanwhile; start them."""
        self.slots.reserve(n, threads=threads)
        started = time.perf_counter()
        try:
            rows = await self.pool.fetch(
                queries.CLAIM_TASKS, self.worker_id, self.queues, n, self.lease, types
            )
        finally:
            self.slots.release(n, threads=threads)
        self.stats.claim_seconds.observe(time.perf_counter() - started)
        self.stats.claim_batch.observe(len(rows))
        self.stats.claim_calls += 1
        self.stats.claimed += len(rows)
        if rows:
            self.on_claimed(rows)
        return rows

    def plan_piggyback(self) -> tuple[int, int, list[str]] | None:
        """What the completer may claim along with its results (finish_and_claim): every
        free slot, for the types that fit; reserved until `claimed_by_completer`."""
        free = self.slots.free()
        if free <= 0 or self.stopping.is_set():
            return None
        if not self.sync_types:
            plan = (free, 0, self.async_types)
        else:
            threads = min(free, self.slots.free_threads())
            if threads == free:
                plan = (free, free, self.all_types)
            elif self.async_types:
                plan = (free, 0, self.async_types)  # sync ones wait for the producer's loop
            elif threads > 0:
                plan = (threads, threads, self.sync_types)
            else:
                return None
        self.slots.reserve(plan[0], threads=plan[1])
        return plan

    def claimed_by_completer(
        self, plan: tuple[int, int, list[str]], rows: list[asyncpg.Record]
    ) -> None:
        self.slots.release(plan[0], threads=plan[1])
        self.stats.claim_batch.observe(len(rows))
        self.stats.claim_calls += 1
        self.stats.claimed += len(rows)
        if rows:
            self.on_claimed(rows)
        if len(rows) < plan[0] or (self.sync_types and plan[2] is self.async_types):
            # Short: the queue ran dry (look once more, as the loop does after a partial
            # claim, for a task whose wake-up was skipped), or sync types were left out.
            self.wake()

    async def run_once(self) -> int:
        """Claim into the free slots; returns how many tasks were claimed.

        Sync tasks never take more than the free thread slots. When those are fewer than
        the free slots, a first claim of any type is bounded by them and, if it came back
        full, a second claim fills the other slots with async types only.
        """
        free = self.slots.free()
        if free <= 0:
            return 0
        if not self.sync_types:
            return len(await self.claim(free, 0, self.async_types))
        threads = min(free, self.slots.free_threads())
        if threads == free or not self.async_types:
            return len(await self.claim(threads, threads, self.all_types)) if threads else 0
        got = 0
        if threads > 0:
            got = len(await self.claim(threads, threads, self.all_types))
            if got < threads:
                return got  # nothing else is ready, of any type
        rest = self.slots.free()
        if rest > 0:
            got += len(await self.claim(rest, 0, self.async_types))
        return got

    # -- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Claim until stopped (or, in burst mode, until nothing is ready and none runs)."""
        backoff = 0.2
        rechecked = False
        gap_rechecked = False
        while not self.stopping.is_set():
            self._wake.clear()
            self.before_claim()
            wait_for: float | None = self.poll_interval
            capacity = self.slots.free()
            if capacity > 0:
                try:
                    claimed = await self.run_once()
                    backoff = 0.2
                except Exception as exc:
                    # Nothing here may end the worker (a server-side error, a statement
                    # timeout, a schema being migrated, a driver bug): back off and retry.
                    self.stats.claim_errors += 1
                    if isinstance(exc, TRANSIENT):
                        self.on_claim_lost()
                    if isinstance(exc, DATABASE_ERRORS):
                        log.warning("claim failed (%s); retrying in %.1fs", exc, backoff)
                    else:
                        log.exception("claim failed; retrying in %.1fs", backoff)
                    await sleep_or_stop(self.stopping, backoff)
                    backoff = min(backoff * 2, 10)
                    continue
                if claimed >= capacity or (claimed and not rechecked):
                    # A full batch: more may be ready (the loop waits for a free slot first).
                    # A partial one: look once more, so a task committed while we claimed,
                    # whose wake-up the database may have skipped, is not left to the poll.
                    rechecked = claimed < capacity
                    # Let the tasks just claimed start before this loop sends its next
                    # round trip: measured ~0.15 ms of enqueue -> start for an idle worker.
                    await asyncio.sleep(0)
                    continue
                rechecked = False
                wait_for = await self.idle_wait()
                if wait_for == 0 and not claimed and not gap_rechecked:
                    # A task became ready between our last claim and this look: committed
                    # while we claimed, its wake-up skipped because the head it saw was the
                    # task we were claiming. Claim once more now instead of after a poll
                    # (under load this race set latency p99 to the poll interval, 1 s).
                    gap_rechecked = True
                    continue
                if wait_for == 0 and not claimed:
                    # Still ready, none claimed: held back by a queue or key limit, a pause
                    # (docs/flow-control.md) or another claimer's lock. A freed slot here or
                    # a NOTIFY wakes us; otherwise look again after a poll, not at once.
                    wait_for = self.poll_interval
                gap_rechecked = False
                if wait_for is None:  # burst mode: nothing ready now
                    if self.slots.idle:
                        return
                    wait_for = self.poll_interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_for)

    async def idle_wait(self) -> float | None:
        """Seconds to sleep when no ready work is left: until the next run_at, at most a poll.
        None in burst mode when nothing is ready now: burst runs what is ready, then exits,
        and does not wait for a task scheduled later (a retry with a delay, `--in`, a
        `run_at` a day ahead), which stays waiting for the next worker."""
        try:
            row = await self.pool.fetchrow(queries.NEXT_RUN_GAP, self.queues, self.all_types)
        except DATABASE_ERRORS:  # a failed peek only means a plain poll
            return self.poll_interval
        gap: timedelta | None = row["gap"] if row else None
        seconds = None if gap is None else max(gap.total_seconds(), 0.0)
        if self.burst and (seconds is None or seconds > 0):
            return None
        if seconds is None:
            return self.poll_interval
        return min(seconds, self.poll_interval)
