"""Reconcile: the tasks the database says a worker holds but it does not run (a claim
that committed while its answer was lost) are handed back at once, with no retry spent;
the tasks it does run, and other workers' tasks, are never touched."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from pgtasks.worker.lease_keeper import LeaseKeeper
from tests.worker.conftest import WORKER, attempt, claim, slots, submit

ROWS = "SELECT id, status::text, retry_count, worker_id FROM pgtasks.tasks ORDER BY id"


async def test_unheld_tasks_of_this_worker_are_handed_back_without_a_retry(conn, pool):
    await submit(conn, "noop", 4)
    held = slots()
    runs, *lost = await claim(conn, 3, lease=600.0)  # `lost`: the answer never arrived
    att = attempt(runs, pool)
    att.future = asyncio.create_task(asyncio.sleep(3600))
    held.add(att)
    (other,) = await claim(conn, 1, worker_id="someone-else", lease=600.0)
    woken: list[str] = []

    keeper = LeaseKeeper(
        pool,
        worker_id=WORKER,
        lease=600.0,
        interval=600.0,
        owned=held.owned,
        on_lost=held.stop,
        slots=held,
        on_resumed=lambda: woken.append("producer"),
    )
    back = await keeper.reconcile()

    assert sorted(back) == sorted(r["id"] for r in lost) and woken == ["producer"]
    rows = {r["id"]: r for r in await conn.fetch(ROWS)}
    for r in lost:  # claimable again now, on the same retry count
        assert (rows[r["id"]]["status"], rows[r["id"]]["retry_count"]) == ("COMMIT", 0)
        assert rows[r["id"]]["worker_id"] is None
    assert (rows[runs["id"]]["status"], rows[runs["id"]]["worker_id"]) == ("RUNNING", WORKER)
    assert rows[other["id"]]["worker_id"] == "someone-else"  # another worker's: untouched
    assert await keeper.reconcile() == []  # nothing left to hand back
    att.future.cancel()


async def test_unknown_holdings_hand_back_nothing(conn):
    await submit(conn, "noop", 1)
    await claim(conn, 1, lease=600.0)
    for held in ("NULL", "ARRAY[NULL]::bigint[]"):
        back = await conn.fetch(f"SELECT * FROM pgtasks.hand_back_unheld($1, {held})", WORKER)
        assert back == []
    assert await conn.fetchval("SELECT status::text FROM pgtasks.tasks") == "RUNNING"


async def test_reconcile_waits_for_a_claim_in_flight_and_pauses_new_ones():
    held = slots(concurrency=4)
    held.reserve(2)  # a claim in flight: its rows may be ones the database would name
    pausing = asyncio.create_task(held.pause_claims(60))
    for _ in range(3):  # let it run up to its wait
        await asyncio.sleep(0)
    assert not pausing.done() and held.free() == 0  # no new claim starts meanwhile
    held.release(2)  # the claim landed (its rows are held by now)
    assert await pausing
    assert held.free() == 0
    held.resume_claims()
    assert held.free() == 4


async def test_a_claim_that_does_not_land_skips_the_reconcile_and_resumes_claims():
    held = slots(concurrency=4)
    held.reserve(1)  # a claim retried through an outage
    assert not await held.pause_claims(0.05)
    assert held.free() == 3


async def test_only_the_worker_role_may_hand_back_and_the_worker_id_is_checked(conn):
    fn = "pgtasks.hand_back_unheld(text, bigint[])"
    may = "SELECT has_function_privilege($1, $2, 'EXECUTE')"
    assert await conn.fetchval(may, "pgtasks_worker", fn)
    for role in ("pgtasks_submitter", "public"):
        assert not await conn.fetchval(may, role, fn), role
    for bad in ("", "w" * 256):
        with pytest.raises(asyncpg.PostgresError) as err:
            await conn.fetch("SELECT * FROM pgtasks.hand_back_unheld($1, '{}')", bad)
        assert err.value.sqlstate == "PT121"
