"""Lease keeper alone: one heartbeat extends every held lease and stops lost tasks."""

from __future__ import annotations

import asyncio

import pytest

from pgtasks.worker.lease_keeper import LeaseKeeper
from pgtasks.worker.slots import StopReason
from tests.conftest import wait_for
from tests.worker.conftest import WORKER, attempt, claim, slots, submit


async def test_heartbeat_extends_leases_and_stops_a_task_whose_lease_was_lost(conn, pool):
    kept, lost = await submit(conn, "noop", 2)
    held = slots()
    for row in await claim(conn, 2, lease=5.0):
        att = attempt(row, pool)
        att.future = asyncio.create_task(asyncio.sleep(3600))
        held.add(att)
    before = await conn.fetchval("SELECT lease_expires_at FROM pgtasks.tasks WHERE id=$1", kept)
    await conn.execute("SELECT pgtasks.cancel_task($1)", lost)  # the database moves on

    keeper = LeaseKeeper(
        pool,
        worker_id=WORKER,
        lease=60.0,
        interval=1.0,
        owned=held.owned,
        on_lost=held.stop,
    )
    assert await keeper.run_once() == [lost]

    stopped = held.running[lost]
    assert stopped.stop_reason is StopReason.LEASE_LOST and stopped.ctx.cancelled
    await asyncio.sleep(0)
    assert stopped.future is not None and stopped.future.cancelled()
    survivor = held.running[kept]
    assert survivor.stop_reason is None and not survivor.future.done()  # type: ignore[union-attr]
    after = await conn.fetchval("SELECT lease_expires_at FROM pgtasks.tasks WHERE id=$1", kept)
    assert after > before
    survivor.future.cancel()  # type: ignore[union-attr]


async def test_results_waiting_in_the_completer_keep_their_lease(conn, pool):
    [tid] = await submit(conn, "noop")
    [row] = await claim(conn, 1, lease=5.0)
    held = slots()
    held.finishing[tid] = row["lease_token"]  # ran, result queued, not yet written
    keeper = LeaseKeeper(
        pool,
        worker_id=WORKER,
        lease=60.0,
        interval=1.0,
        owned=held.owned,
        on_lost=lambda *lost: pytest.fail(f"lost {lost}"),
    )
    assert await keeper.run_once() == []
    left = await conn.fetchval(
        "SELECT lease_expires_at - now() FROM pgtasks.tasks WHERE id = $1", tid
    )
    assert left.total_seconds() > 30


async def test_a_cancel_notice_is_confirmed_by_a_heartbeat_at_once(conn, pool):
    """A notice only makes the keeper ask: a task the database still gives this worker runs
    on; the one it cancelled stops, as "cancelled". No waiting for the next interval."""
    kept, cancelled = await submit(conn, "noop", 2)
    held = slots()
    for row in await claim(conn, 2, lease=60.0):
        att = attempt(row, pool)
        att.future = asyncio.create_task(asyncio.sleep(3600))
        held.add(att)
    keeper = LeaseKeeper(
        pool, worker_id=WORKER, lease=60.0, interval=3600.0, owned=held.owned, on_lost=held.stop
    )
    lease = "SELECT lease_expires_at FROM pgtasks.tasks WHERE id = $1"
    before = await conn.fetchval(lease, kept)
    keeper.start()
    try:
        keeper.confirm(kept)  # a forged notice: the database says it is still ours
        await wait_for(conn, f"SELECT ({lease}) > $2", kept, before)  # the heartbeat went out
        assert held.running[kept].stop_reason is None
        await conn.execute("SELECT pgtasks.cancel_task($1)", cancelled)
        keeper.confirm(cancelled)
        stopped = held.running[cancelled]
        await asyncio.wait_for(stopped.ctx._cancel.wait(), 30)  # bounds a hung test only
        assert stopped.stop_reason is StopReason.CANCELLED
        assert held.running[kept].stop_reason is None
    finally:
        await keeper.stop()
        for att in held.running.values():
            assert att.future is not None
            att.future.cancel()
