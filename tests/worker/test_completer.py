"""Completer alone: batched results, a poisoned batch split, fenced writes, failures."""

from __future__ import annotations

import json

from pgtasks.worker.completer import Completer
from pgtasks.worker.runner import Dropped, Failed, Succeeded, Yielded
from pgtasks.worker.slots import StopReason
from tests.worker.conftest import claim, slots, status, submit


def completer(pool, stats, stopping) -> Completer:
    return Completer(pool, slots=slots(), stats=stats, stopping=stopping)


async def test_results_are_written_in_one_batch(conn, pool, stats, stopping):
    await submit(conn, "noop", 3)
    rows = await claim(conn, 3)
    c = completer(pool, stats, stopping)
    for r in rows:
        await c.record(r["id"], r["lease_token"], Succeeded(json.dumps({"n": r["id"]})))
    assert c.pending == 3 and sorted(c.slots.finishing) == sorted(r["id"] for r in rows)
    await c.run_once()
    assert stats.finish_calls == 1 and stats.succeeded == 3
    assert not c.slots.finishing  # written: no longer held
    for r in rows:
        assert await status(conn, r["id"]) == "DONE"
        assert await conn.fetchval("SELECT result FROM pgtasks.tasks WHERE id=$1", r["id"]) == {
            "n": r["id"]
        }


async def test_a_poisoned_result_fails_alone_and_the_rest_of_its_batch_is_written(
    conn, pool, stats, stopping
):
    await submit(conn, "noop", 5)
    rows = await claim(conn, 5)
    c = completer(pool, stats, stopping)
    poisoned = rows[3]["id"]
    for r in rows:
        # jsonb cannot store \u0000: the one statement for the whole batch fails.
        text = '"\\u0000"' if r["id"] == poisoned else '"ok"'
        await c.record(r["id"], r["lease_token"], Succeeded(text))
    await c.run_once()
    assert stats.succeeded == 4 and stats.failed == 1
    for r in rows:
        assert await status(conn, r["id"]) == ("FAILED" if r["id"] == poisoned else "DONE")
    error = await conn.fetchval("SELECT error FROM pgtasks.tasks WHERE id = $1", poisoned)
    assert error.startswith("result could not be stored")


async def test_a_stale_token_is_rejected_not_written(conn, pool, stats, stopping):
    [tid] = await submit(conn, "noop")
    [row] = await claim(conn, 1)
    await conn.execute("SELECT pgtasks.cancel_task($1)", tid)
    c = completer(pool, stats, stopping)
    await c.record(tid, row["lease_token"], Succeeded('"late"'))
    await c.run_once()
    assert stats.lost == 1 and stats.succeeded == 0
    assert await status(conn, tid) == "CANCELLED"


async def test_failures_and_hand_backs(conn, pool, stats, stopping):
    a, b, d, lost = await submit(conn, "noop", 4)
    rows = {r["id"]: r for r in await claim(conn, 4)}
    c = completer(pool, stats, stopping)
    await c.record(a, rows[a]["lease_token"], Failed("boom", "tb", retryable=True))
    await c.record(b, rows[b]["lease_token"], Failed("bad", None, retryable=False))
    await c.record(d, rows[d]["lease_token"], Yielded(None, handed_back=True))
    await conn.execute("SELECT pgtasks.cancel_task($1)", lost)
    await c.record(lost, rows[lost]["lease_token"], Failed("late", None, retryable=True))
    await c.record(lost, rows[lost]["lease_token"], Dropped(StopReason.CANCELLED))
    assert [await status(conn, t) for t in (a, b, d, lost)] == [
        "COMMIT",
        "FAILED",
        "COMMIT",
        "CANCELLED",
    ]
    assert (stats.retried, stats.failed, stats.handed_back, stats.lost) == (1, 1, 1, 1)


async def test_finishing_claims_work_for_the_freed_slots_in_the_same_round_trip(
    conn, pool, stats, stopping
):
    from pgtasks.worker.producer import Producer
    from tests.worker.conftest import WORKER

    await submit(conn, "noop", 5)
    rows = await claim(conn, 2)
    held = slots(concurrency=2)
    started: list[int] = []
    producer = Producer(
        pool,
        worker_id=WORKER,
        slots=held,
        async_types=["noop"],
        sync_types=[],
        on_claimed=lambda claimed: started.extend(r["id"] for r in claimed),
        stats=stats,
        stopping=stopping,
    )
    c = Completer(pool, slots=held, stats=stats, stopping=stopping, claimer=producer)
    for r in rows:
        await c.record(r["id"], r["lease_token"], Succeeded("1"))
    await c.run_once()
    assert stats.finish_calls == 1 and stats.claim_calls == 1  # one statement did both
    assert len(started) == 2 and not set(started) & {r["id"] for r in rows}
    assert [await status(conn, r["id"]) for r in rows] == ["DONE", "DONE"]
    assert [await status(conn, t) for t in started] == ["RUNNING", "RUNNING"]
    assert held.free() == 2  # the reservation is released (the rows went to on_claimed)
