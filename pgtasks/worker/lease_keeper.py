"""Lease keeper: extends the leases of every task the worker holds, in one statement per
interval, on a connection of its own (busy tasks cannot delay it until leases run out), and
stops the tasks the database says this worker no longer owns (rescued, cancelled, re-claimed).

It is also how a cancel notification is confirmed. Any role may NOTIFY pgtasks_cancel, so
a notice only makes the keeper heartbeat at once: the database, through the lease tokens,
says which tasks are no longer held, and only those stop. However many notices arrive, the
extra heartbeats are at most one per CONFIRM_GAP_S.

After each heartbeat it reconciles: a claim can commit while its answer is lost with the
connection, leaving RUNNING rows under this worker's id that nothing here runs. With claims
paused (so none lands unlisted), it sends the ids it holds and the database hands back
every other task of this worker (hand_back_unheld) at once, spending no retry, instead of
leaving them to wait out their lease and be rescued as failed attempts. A failed claim
asks for a reconcile at once (`reconcile_soon`), retried every RECONCILE_RETRY_S until the
database answers.
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
from pgtasks.worker.slots import Slots, StopReason

log = logging.getLogger("pgtasks.worker")

#: At most one heartbeat per this many seconds for cancel notices (a flood of forged notices
#: costs the database no more than that); the first after a quiet spell goes out at once.
CONFIRM_GAP_S = 0.2

#: How often a reconcile a failed claim asked for is tried while the database is away (a
#: heartbeat interval, a third of the lease, would leave the lost tasks that long).
RECONCILE_RETRY_S = 0.5

#: How long a reconcile waits for the claims in flight to land before skipping this round
#: (one retried through an outage may take long; the heartbeat must not wait for it).
RECONCILE_SETTLE_S = 2.0


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
        slots: Slots | None = None,
        on_resumed: Callable[[], object] | None = None,
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
        self.slots = slots  # None: no reconcile (claims cannot be paused)
        self.on_resumed = on_resumed or (lambda: None)  # claims may go on: wake the producer
        self._reconcile_due = False  # a claim failed: its answer may have been lost

    def reconcile_soon(self) -> None:
        """A claim failed with a connection error: it may have committed. Reconcile now."""
        self._reconcile_due = True
        self._nudge.set()

    async def reconcile(self) -> list[int]:
        """Hand back every RUNNING task of this worker that it does not hold; their ids.
        Skipped ([] and still due) when the claims in flight do not land in time."""
        slots = self.slots
        if slots is None:
            return []
        if not await slots.pause_claims(RECONCILE_SETTLE_S):
            self.on_resumed()  # the producer may have skipped a claim meanwhile
            return []
        try:
            held = [t for t, _ in slots.owned()]
            rows = await self.pool.fetch(queries.HAND_BACK_UNHELD, self.worker_id, held)
        except asyncpg.UndefinedFunctionError:
            # A schema before sql/0048 (a worker upgraded ahead of `pgtasks migrate`):
            # the leases hand such tasks on, as before; heartbeats go on.
            log.warning("the schema has no hand_back_unheld yet (sql/0048): not reconciling")
            self.slots = None
            return []
        finally:
            slots.resume_claims()
            # Claims resume: wake the producer, which saw no free slot while they were
            # paused (and a result written meanwhile claimed nothing with it).
            self.on_resumed()
        self._reconcile_due = False
        back = [r[0] for r in rows]
        if back:
            log.warning(
                "handed back %d task(s) this worker was claimed for but does not run "
                "(a claim's answer was lost): %s",
                len(back),
                back,
            )
        return back

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
            wait = self.interval
            if self._reconcile_due:  # not done yet: the database away, or claims in flight
                wait = min(wait, RECONCILE_RETRY_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._nudge.wait(), wait)
            if self._nudge.is_set():
                await asyncio.sleep(max(0.0, last + CONFIRM_GAP_S - loop.time()))
            self._nudge.clear()
            last = loop.time()
            try:
                if self._failing and self.on_reconnect is not None:
                    await self.on_reconnect()  # the registry row may have been swept meanwhile
                await self.run_once()
                await self.reconcile()
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
