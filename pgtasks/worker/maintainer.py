"""Maintainer: the database's housekeeping, run by every worker on a timer so no cron job is
needed. Rescues tasks whose lease expired (their worker died) and prunes finished tasks past
their retention, a bounded batch at a time. Fires due schedules about every second
(pgtasks.schedules.fire_due: each due schedule goes to one worker per round).

Every worker runs it; maintain() lets one call at a time do the work and the others return
at once, so a fleet of 20 workers costs one rescue scan per interval, not twenty."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import timedelta

import asyncpg

from pgtasks import queries, schedules
from pgtasks.db import TRANSIENT
from pgtasks.worker.base import Service

log = logging.getLogger("pgtasks.worker")

#: Pruning deletes finished tasks this many at a time, for at most this long per round.
PRUNE_BATCH = 1000
PRUNE_BUDGET_S = 5.0


class Maintainer(Service):
    """`retention` None (the default): pgtasks.maintain(), i.e. rescue, sweeps and pruning
    past the database's settings.retention, the same call a worker in any language makes.
    An explicit `retention` prunes with that age instead; `prune=False` only rescues."""

    name = "maintainer"

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        interval: float,
        retention: timedelta | None = None,
        prune: bool = True,
        prune_interval: float = 60.0,
        on_rescued: Callable[[int], None] | None = None,
        schedule_interval: float | None = 1.0,
        worker_id: str | None = None,
    ) -> None:
        super().__init__()
        self.pool = pool
        self.interval = interval
        self.retention = retention
        self.prune = prune
        self.prune_interval = prune_interval
        self.on_rescued = on_rescued or (lambda n: None)
        self._next_prune = 0.0
        #: None: this worker fires no schedules (others do).
        self.schedule_interval = schedule_interval
        self.worker_id = worker_id

    async def run_once(self) -> tuple[int, int]:
        """Rescue expired leases and prune what is due; returns (rescued, pruned)."""
        if self.prune and self.retention is None:
            row = await self.pool.fetchrow(queries.MAINTAIN, PRUNE_BATCH)
            assert row is not None  # maintain() returns one row
            rescued, pruned = int(row["rescued"]), int(row["pruned"])
        else:
            rescued, pruned = int(await self.pool.fetchval(queries.RESCUE_EXPIRED)), 0
        if rescued:
            log.warning("rescued %s task(s) whose worker stopped heartbeating", rescued)
            self.on_rescued(rescued)
        # More batches when maintain()'s one was full, or on our own schedule with an
        # explicit retention.
        loop = asyncio.get_running_loop()
        more = pruned >= PRUNE_BATCH or self.retention is not None
        if self.prune and more and loop.time() >= self._next_prune:
            self._next_prune = loop.time() + self.prune_interval
            pruned += await self._prune()
        return rescued, pruned

    async def _prune(self) -> int:
        """As many batches as fit in a few seconds, so pruning keeps up with a busy queue,
        but no long locks: each batch is its own short statement."""
        loop = asyncio.get_running_loop()
        budget_end = loop.time() + PRUNE_BUDGET_S
        total = 0
        while True:
            deleted = int(
                await self.pool.fetchval(queries.PRUNE_FINISHED, self.retention, PRUNE_BATCH)
            )
            total += deleted
            if deleted < PRUNE_BATCH or loop.time() >= budget_end:
                return total
            await asyncio.sleep(0)  # let claims and completions through between batches

    async def fire_schedules(self) -> int:
        """Enqueue the ticks of the schedules that are due; returns the tasks enqueued."""
        return await schedules.fire_due(self.pool, worker_id=self.worker_id)

    async def run(self) -> None:
        """Schedules every `schedule_interval` (they are due to the second), maintenance
        every `interval`; each with jitter, so a fleet does not call in step."""
        loop = asyncio.get_running_loop()
        next_maintain = loop.time() + self.interval * random.uniform(0.8, 1.2)
        while True:
            step = next_maintain - loop.time()
            if self.schedule_interval is not None:
                step = min(step, self.schedule_interval * random.uniform(0.8, 1.2))
            await asyncio.sleep(max(step, 0.0))
            if self.schedule_interval is not None:
                await self._step("schedules", self.fire_schedules)
            if loop.time() >= next_maintain:
                next_maintain = loop.time() + self.interval * random.uniform(0.8, 1.2)
                await self._step("maintenance", self.run_once)

    async def _step(self, what: str, step: Callable[[], Awaitable[object]]) -> None:
        try:
            await step()
        except TRANSIENT as exc:
            log.warning("%s skipped (%s)", what, exc)
        except Exception:  # keep rescuing and firing: no other process will
            log.exception("%s failed; trying again later", what)
