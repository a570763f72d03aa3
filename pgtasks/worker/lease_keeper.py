"""Lease keeper: extends the leases of every task the worker holds, in one statement per
interval, on a connection of its own (busy tasks cannot delay it until leases run out), and
stops the tasks the database says this worker no longer owns (rescued, cancelled, re-claimed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

import asyncpg

from pgtasks import queries
from pgtasks.db import TRANSIENT
from pgtasks.worker.base import Service

log = logging.getLogger("pgtasks.worker")


class LeaseKeeper(Service):
    name = "lease keeper"

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        worker_id: str,
        lease: float | None,
        interval: float,
        owned: Callable[[], list[tuple[int, int]]],
        on_lost: Callable[[int], object],
        on_reconnect: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__()
        self.pool = pool
        self.worker_id = worker_id
        self.lease = timedelta(seconds=lease) if lease is not None else None
        self.interval = interval
        self.owned = owned
        self.on_lost = on_lost
        self.on_reconnect = on_reconnect
        self._failing = False

    async def run_once(self) -> list[int]:
        """One heartbeat: extend every held lease; stop and return the ids that were lost."""
        held = self.owned()
        rows = await self.pool.fetch(
            queries.HEARTBEAT,
            self.worker_id,
            [t for t, _ in held],
            [a for _, a in held],
            self.lease,
        )
        lost = [r[0] for r in rows]
        for task_id in lost:
            self.on_lost(task_id)
        return lost

    async def run(self) -> None:
        # This loop must outlive any error: if it died, every lease would run out while the
        # tasks go on running here, and rescue would start them a second time elsewhere.
        while True:
            await asyncio.sleep(self.interval)
            try:
                if self._failing and self.on_reconnect is not None:
                    await self.on_reconnect()  # the registry row may have been swept meanwhile
                await self.run_once()
            except TRANSIENT as exc:
                self._failing = True
                log.warning("heartbeat failed (%s); leases expire if this persists", exc)
                continue
            except Exception:
                self._failing = True
                log.exception("heartbeat failed; retrying")
                continue
            if self._failing:
                log.info("heartbeat is back")
                self._failing = False
