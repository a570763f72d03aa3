"""Producer alone: claims into free slots only, and sync types only into free thread slots."""

from __future__ import annotations

import asyncio

import asyncpg

from pgtasks.worker.producer import Producer
from pgtasks.worker.slots import Slots
from tests.worker.conftest import WORKER, attempt, submit


def producer(pool, stats, stopping, slots: Slots, **kw) -> tuple[Producer, list[asyncpg.Record]]:
    started: list[asyncpg.Record] = []

    def on_claimed(rows: list[asyncpg.Record]) -> None:
        for row in rows:
            started.append(row)
            slots.add(attempt(row, pool, is_sync=row["task_type"] in kw.get("sync_types", [])))

    opts = {"async_types": ["noop"], "sync_types": []} | kw
    p = Producer(
        pool,
        worker_id=WORKER,
        slots=slots,
        on_claimed=on_claimed,
        stats=stats,
        stopping=stopping,
        lease=60.0,
        **opts,
    )
    return p, started


async def test_claims_only_into_free_slots(conn, pool, stats, stopping):
    await submit(conn, "noop", 5)
    held = Slots(concurrency=3, threads=3)
    p, started = producer(pool, stats, stopping, held)
    assert await p.run_once() == 3
    assert len(started) == 3 and held.free() == 0
    assert await p.run_once() == 0  # full: no claim is even sent
    assert stats.claim_calls == 1
    held.ended(held.running[started[0]["id"]])  # a slot frees
    assert await p.run_once() == 1


async def test_sync_tasks_take_only_free_thread_slots(conn, pool, stats, stopping):
    await submit(conn, "sync_add", 4)
    await submit(conn, "noop", 4)
    held = Slots(concurrency=6, threads=2)
    p, started = producer(
        pool, stats, stopping, held, async_types=["noop"], sync_types=["sync_add"]
    )
    assert await p.run_once() == 6
    types = [r["task_type"] for r in started]
    assert types.count("sync_add") == 2 and types.count("noop") == 4
    assert held.free_threads() == 0


async def test_idle_wait_sleeps_until_the_next_scheduled_task(conn, pool, stats, stopping):
    held = Slots(concurrency=3, threads=3)
    p, _ = producer(pool, stats, stopping, held)
    p.poll_interval = 30.0
    await conn.execute("SELECT pgtasks.submit_task('noop', run_at => now() + interval '2 s')")
    gap = await p.idle_wait()
    assert gap is not None and 0 < gap <= 2.0
    p.burst = True
    assert await p.idle_wait() is None  # burst mode: a task due later is not waited for
    await conn.execute("SELECT pgtasks.submit_task('noop')")
    assert await p.idle_wait() == 0  # one ready now is
    await conn.execute("DELETE FROM pgtasks.tasks")
    assert await p.idle_wait() is None  # nothing left at all


async def test_a_task_ready_after_the_last_claim_is_claimed_without_a_poll(
    conn, pool, stats, stopping
):
    """A task that commits between the loop's last claim and its look at next_run_at (its
    wake-up skipped: the head it saw was still being claimed) is claimed at once, not after
    the poll interval (here an hour)."""
    held = Slots(concurrency=3, threads=3)
    p, started = producer(pool, stats, stopping, held, poll_interval=3600.0)
    real_idle_wait = p.idle_wait
    looks = 0

    async def idle_wait_after_a_commit() -> float | None:
        nonlocal looks
        looks += 1
        if looks == 1:
            await submit(conn, "noop", 1)
        return await real_idle_wait()

    p.idle_wait = idle_wait_after_a_commit  # type: ignore[method-assign]

    async def until_started() -> None:
        while not started:
            await asyncio.sleep(0.01)

    loop = asyncio.create_task(p.run())
    try:
        # Not a speed bound: without the second look the task waits for the hour's poll.
        await asyncio.wait_for(until_started(), 60)
    finally:
        stopping.set()
        p.wake()
        await asyncio.wait_for(loop, 30)
    assert len(started) == 1 and looks >= 1
