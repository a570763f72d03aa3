"""Slots: free slots, thread slots, prefetch that switches itself off for long tasks, and
prefetched tasks handed back instead of waiting behind long ones."""

from __future__ import annotations

import asyncio
from typing import Any

from pgtasks import Client, Registry, Worker, task_register
from pgtasks.worker.slots import PREFETCH_MAX_TASK_S, Slots, StopReason
from tests.conftest import until, wait_for
from tests.worker.conftest import attempt, claim, submit


async def test_prefetch_room_only_while_tasks_are_short(conn, pool):
    slots = Slots(concurrency=2, threads=2, prefetch=2)
    assert slots.free() == 4  # 2 slots + 2 prefetched
    await submit(conn, "noop", 4)
    rows = await claim(conn, 4)
    for row in rows[:2]:
        slots.add(attempt(row, pool))
    for row in rows[2:]:
        slots.hold(row)
    assert slots.free() == 0 and not slots.has_room()
    assert {t for t, _ in slots.owned()} == {r["id"] for r in rows}  # leases for all four
    first = slots.running[rows[0]["id"]]
    slots.ended(first, seconds=10 * PREFETCH_MAX_TASK_S / 0.05)  # one very long task
    assert slots.avg_task_s > PREFETCH_MAX_TASK_S
    assert slots.has_room() and slots.next_held()["id"] == rows[2]["id"]
    assert slots.free() == 1 - 1  # no prefetch room now: 1 free slot, 1 still held
    assert slots.stop(rows[3]["id"], StopReason.CANCELLED) and not slots.buffer  # never started
    assert slots.stale(everything=True) == []


REG = Registry()
HOLD = asyncio.Event()


@task_register("hold", into=REG)
async def hold(ctx: Any, params: dict[str, Any]) -> str:
    await HOLD.wait()
    return "held"


@task_register("quick", into=REG)
async def quick(ctx: Any, params: dict[str, Any]) -> str:
    return "quick"


async def test_a_stopping_worker_hands_back_its_prefetched_tasks(dsn, conn):
    HOLD.clear()
    w = Worker(dsn, registry=REG, concurrency=1, prefetch=3, poll_interval=0.1)
    async with Client(dsn) as client:
        held = await client.submit("hold")
        run = asyncio.create_task(w.run())
        await wait_for(conn, "SELECT status = 'RUNNING' FROM pgtasks.tasks WHERE id = $1", held)
        waiting = [await client.submit("quick") for _ in range(2)]
        # Prefetched behind the running task (it holds the only slot). The database shows a
        # claim as soon as it commits, before the worker has read its answer, so wait for the
        # worker's own buffer too.
        await wait_for(conn, "SELECT count(*) = 3 FROM pgtasks.tasks WHERE status = 'RUNNING'")
        await until(lambda: len(w.slots.buffer) == 2, what="both quick tasks prefetched")
        w.stop()
        HOLD.set()
        await asyncio.wait_for(run, 30)
    statuses = await conn.fetch(
        "SELECT status::text FROM pgtasks.tasks WHERE id = ANY($1)", waiting
    )
    assert [r[0] for r in statuses] == ["COMMIT", "COMMIT"]  # given back, no retry used
    assert await conn.fetchval("SELECT status::text FROM pgtasks.tasks WHERE id=$1", held) == "DONE"


async def test_a_prefetched_task_that_waited_too_long_is_given_up_and_prefetch_stops(
    conn, pool, monkeypatch
):
    import pgtasks.worker.slots as slots_module

    slots = Slots(concurrency=1, threads=1, prefetch=1)
    await submit(conn, "noop", 2)
    running, waiting = await claim(conn, 2)
    slots.add(attempt(running, pool))
    slots.hold(waiting)
    assert slots.stale() == []  # not old yet
    monkeypatch.setattr(slots_module, "PREFETCH_MAX_WAIT_S", 0.0)
    assert [r["id"] for r in slots.stale()] == [waiting["id"]]
    assert slots.free() == 0  # the running task is long: no prefetch room any more
