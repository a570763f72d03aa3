"""Lease keeper: extends the leases of every task the worker holds, in one statement per
interval, on a connection of its own (busy tasks cannot delay it until leases run out), and
stops the tasks the database says this worker no longer owns (rescued, cancelled, re-claimed).

It is also how a cancel notification is confirmed. Any role may NOTIFY pgtasks_cancel, so
a notice only makes the keeper heartbeat at once: the database, through the lease tokens,
says which tasks are no longer held, and only those stop. However many notices arrive, the
extra heartbeats are at most one per CONFIRM_GAP_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

import asyncpg

from pgtasks import queries
from pgtasks.db import TRANSIENT
from pgtasks.worker.base import Service
from pgtasks.worker.slots import StopReason

log = logging.getLogger("pgtasks.worker")

#: At most one heartbeat per this many seconds for cancel notices (a flood of forged notices
#: costs the database no more than that); the first after a quiet spell goes out at once.
CONFIRM_GAP_S = 0.2


class LeaseKeeper(Service):
    name = "lease keeper"

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        worker_id: str,
        lease: float | None,
        interval: float,
        owned: Callable[[], list[tuple[int, str]]],
        on_lost: Callable[[int, StopReason], object],
        on_reconnect: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__()
        self.pool = pool
        self.worker_id = worker_id
        self.lease = timedelta(seconds=lease) if lease is not None else None
        self.interval = interval
        self.owned = owned
        self.on_lost = on_lost  # (task_id, why): CANCELLED after a cancel notice, else LEASE_LOST
        self.on_reconnect = on_reconnect
        self._failing = False
        self._nudge = asyncio.Event()
        self._hinted: set[int] = set()

    def confirm(self, task_id: int) -> None:
        """A cancel notice named a task held here: ask the database now whether it still is."""
        self._hinted.add(task_id)
        self._nudge.set()

    async def run_once(self) -> list[int]:
        """One heartbeat: extend every held lease; stop and return the ids that were lost."""
        held = self.owned()
        hinted, self._hinted = self._hinted, set()
        try:
            rows = await self.pool.fetch(
                queries.HEARTBEAT,
                self.worker_id,
                [t for t, _ in held],
                [k for _, k in held],
                self.lease,
            )
        except BaseException:
            self._hinted |= hinted  # still to be confirmed by the next one
            raise
        lost = [r[0] for r in rows]
        for task_id in lost:
            self.on_lost(
                task_id, StopReason.CANCELLED if task_id in hinted else StopReason.LEASE_LOST
            )
        return lost

    async def run(self) -> None:
        # This loop must outlive any error: if it died, every lease would run out while the
        # tasks go on running here, and rescue would start them a second time elsewhere.
        loop = asyncio.get_running_loop()
        last = float("-inf")
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._nudge.wait(), self.interval)
            if self._nudge.is_set():
                await asyncio.sleep(max(0.0, last + CONFIRM_GAP_S - loop.time()))
            self._nudge.clear()
            last = loop.time()
            try:
                if self._failing and self.on_reconnect is not None:
                    await self.on_reconnect()  # the registry row may have been swept meanwhile
                await self.run_once()
            except TRANSIENT as exc:
                # A lock timeout lands here too: the statement waited its bound for a row
                # another session holds and wrote nothing. Tried again next round.
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
