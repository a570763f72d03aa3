"""The charts' roll-up (roll_up, task_chart): its buckets hold exactly the tasks that ended in
them, with their run and wait times, whatever the span they are read over. Time moves by
pgtasks.advance_clock, so every duration here is known to the second."""

from __future__ import annotations

import asyncpg
import pytest

from tests.sql.helpers import TOKEN, raises


async def tick(conn: asyncpg.Connection, seconds: float) -> None:
    await conn.execute("SELECT pgtasks.advance_clock($1::float8 * interval '1 second')", seconds)


async def run(conn: asyncpg.Connection, queue: str, *, wait_s: float, run_s: float) -> int:
    """A task of `queue` that waits wait_s ready, then runs run_s and ends DONE (the
    queue's oldest ready task, when it had some already)."""
    await conn.fetchval("SELECT pgtasks.submit_task('t', queue => $1)", queue)
    await tick(conn, wait_s)
    claim = "SELECT id FROM pgtasks.claim_tasks('w', max_tasks => 1, queues => ARRAY[$1])"
    tid = await conn.fetchval(claim, queue)
    await tick(conn, run_s)
    await conn.execute(f"SELECT pgtasks.finish_task($1, {TOKEN}, '1')", tid)
    return tid


async def roll_all(conn: asyncpg.Connection) -> int:
    """roll_up until it has nothing left; the buckets it rolled."""
    total = 0
    while n := await conn.fetchval("SELECT pgtasks.roll_up()"):
        total += n
    return total


async def chart(conn: asyncpg.Connection, span: str, queue: str | None = None) -> list[dict]:
    rows = await conn.fetch("SELECT * FROM pgtasks.task_chart($1::text::interval, $2)", span, queue)
    return [dict(r) for r in rows]


def total(rows: list[dict], key: str) -> int:
    return sum(r[key] or 0 for r in rows)


def ended(rows: list[dict]) -> tuple[int, int, int]:
    return total(rows, "done"), total(rows, "failed"), total(rows, "cancelled")


async def test_buckets_hold_the_tasks_that_ended_in_them(conn):
    await roll_all(conn)  # the start: nothing ended before
    a1 = await run(conn, "a", wait_s=3, run_s=2)
    await run(conn, "a", wait_s=1, run_s=40)
    await run(conn, "b", wait_s=0.2, run_s=0.3)
    failed = await conn.fetchval("SELECT pgtasks.submit_task('t', queue => 'b', max_retries => 0)")
    await conn.fetch("SELECT * FROM pgtasks.claim_tasks('w', max_tasks => 1, queues => ARRAY['b'])")
    await conn.execute(f"SELECT pgtasks.fail_task($1, {TOKEN}, 'boom')", failed)
    cancelled = await conn.fetchval("SELECT pgtasks.submit_task('t', queue => 'b')")
    await conn.execute("SELECT pgtasks.cancel_task($1)", cancelled)

    # Not yet: the bucket of the last finish ends less than 5 s ago.
    await roll_all(conn)
    assert total(await chart(conn, "5 minutes"), "done") < 3
    await tick(conn, 20)
    assert await roll_all(conn) >= 1
    rows = await chart(conn, "5 minutes")
    assert len(rows) == 30 and all(r["width"].total_seconds() == 10 for r in rows)
    assert [r["bucket"] for r in rows] == sorted(r["bucket"] for r in rows)
    assert (total(rows, "done"), total(rows, "failed"), total(rows, "cancelled")) == (3, 1, 1)

    # Each bucket holds what the tasks table says ended in it.
    expected = {
        r["b"]: (r["done"], r["failed"])
        for r in await conn.fetch(
            "SELECT date_bin('10 seconds', finished_at, '2000-01-01 00:00+00') AS b,"
            " count(*) FILTER (WHERE status = 'DONE') AS done,"
            " count(*) FILTER (WHERE status = 'FAILED') AS failed"
            " FROM pgtasks.tasks WHERE finished_at IS NOT NULL GROUP BY 1"
        )
    }
    got = {r["bucket"]: (r["done"], r["failed"]) for r in rows if r["done"] or r["failed"]}
    assert got == expected

    # Per queue; run and wait times from the clock's steps (a: runs 2 and 40 s, waits 3 and 1).
    a = await chart(conn, "5 minutes", "a")
    assert total(a, "done") == 2 and total(a, "failed") == 0
    assert max(r["run_max"] or 0 for r in a) == pytest.approx(40, abs=0.5)
    first = next(r for r in a if r["done"] and r["bucket"] <= rows[-1]["bucket"])
    assert first["run_count"] == 1 and first["run_p50"] == pytest.approx(2, abs=0.5)
    assert first["wait_p95"] == pytest.approx(3, abs=0.5)
    assert first["wait_mean"] == pytest.approx(3, abs=0.5)
    b = await chart(conn, "5 minutes", "b")
    assert (total(b, "done"), total(b, "failed"), total(b, "cancelled")) == (1, 1, 1)
    # The cancelled task never ran: no run time. The failed one ran its one attempt.
    assert total(b, "run_count") == 2 and total(b, "wait_count") == 2
    assert await conn.fetchval("SELECT status FROM pgtasks.tasks WHERE id = $1", a1) == "DONE"

    # Rolling again counts nothing twice.
    assert await roll_all(conn) == 0
    assert total(await chart(conn, "5 minutes"), "done") == 3

    # The same tasks over an hour (10-second buckets) and over a day (5-minute buckets).
    hour, day = await chart(conn, "1 hour"), await chart(conn, "24 hours")
    assert len(hour) == 360 and len(day) == 288
    assert day[0]["width"].total_seconds() == 300
    for rows_ in (hour, day):
        assert (total(rows_, "done"), total(rows_, "failed"), total(rows_, "cancelled")) == (
            3,
            1,
            1,
        )
        assert max(r["run_max"] or 0 for r in rows_) == pytest.approx(40, abs=0.5)
    # The day's percentile comes from the summed histograms: 3 runs (0.3, 2, 40 s) and a
    # failed one of about 0, so the p95 is the longest run.
    assert max(r["run_p95"] or 0 for r in day) == pytest.approx(40, abs=0.5)


async def test_buckets_not_rolled_yet_have_no_counts(conn):
    await roll_all(conn)
    rows = await chart(conn, "5 minutes")
    assert rows[-1]["rolled"] is False and rows[-1]["done"] is None
    assert rows[0]["rolled"] is True and rows[0]["done"] == 0


async def test_depth_is_sampled_and_old_buckets_go(conn):
    for _ in range(3):
        await conn.fetchval("SELECT pgtasks.submit_task('t', queue => 'deep')")
    await roll_all(conn)
    rows = await chart(conn, "5 minutes", "deep")
    assert max(r["ready"] or 0 for r in rows) == 3
    await run(conn, "deep", wait_s=1, run_s=1)
    await tick(conn, 20)
    await roll_all(conn)
    # Three hours on: the 10-second buckets are gone, the 5-minute ones keep the day.
    await tick(conn, 3 * 3600)
    await roll_all(conn)
    fine = "SELECT count(*) FROM pgtasks.task_rollup WHERE width = '10 seconds' AND bucket < $1"
    cutoff = await conn.fetchval("SELECT pgtasks.now() - interval '2 hours 5 minutes'")
    assert await conn.fetchval(fine, cutoff) == 0
    assert total(await chart(conn, "1 hour", "deep"), "done") == 0
    assert total(await chart(conn, "24 hours", "deep"), "done") == 1


async def test_maintain_rolls_up(conn):
    rolled_to = "SELECT rolled_to > pgtasks.now() - interval '3 hours' FROM pgtasks.rollup_state"
    assert await conn.fetchval(rolled_to) is False  # -infinity: never rolled
    await conn.fetch("SELECT * FROM pgtasks.maintain()")
    assert await conn.fetchval(rolled_to) is True


@pytest.mark.parametrize("span", ["30 seconds", "8 days", None, "-1 hour"])
async def test_a_span_out_of_bounds_is_refused(conn, span):
    await raises(conn, "SELECT * FROM pgtasks.task_chart($1::text::interval)", "PT133", span)


async def test_percentile_of_a_histogram(conn):
    q = "SELECT pgtasks.histogram_quantile(pgtasks.histogram($1::float8[]), $2, $3)"
    values = [0.001] * 50 + [3.0] * 45 + [100.0] * 5
    assert await conn.fetchval(q, values, 0.5, 100.0) == 0.005  # the bin [0, 0.005)
    assert await conn.fetchval(q, values, 0.95, 100.0) == 5  # the bin [2.5, 5)
    assert await conn.fetchval(q, values, 0.99, 100.0) == 100  # [60, 120), at most the max
    assert await conn.fetchval(q, [], 0.5, None) is None


async def test_a_second_roll_up_returns_at_once_while_one_works(conn, dsn):
    await run(conn, "a", wait_s=1, run_s=1)
    await tick(conn, 20)
    other = await asyncpg.connect(dsn)
    try:
        async with other.transaction():  # one call at work, holding rolled_to's row
            assert await other.fetchval("SELECT pgtasks.roll_up()") >= 1
            assert await conn.fetchval("SELECT pgtasks.roll_up()") == 0  # no wait
        assert total(await chart(conn, "5 minutes"), "done") == 1  # counted once
    finally:
        await other.close()
