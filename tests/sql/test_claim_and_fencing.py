"""claim_tasks order and fencing: a stale lease token can change nothing."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from pgtasks import db


async def claim(conn, n=1, worker="w1", **kw):
    args = ", ".join(f"{k} => ${i + 3}" for i, k in enumerate(kw))
    q = f"SELECT * FROM pgtasks.claim_tasks($1, max_tasks => $2{', ' + args if args else ''})"
    return await conn.fetch(q, worker, n, *kw.values())


async def test_claim_order_priority_then_age(conn):
    low = await conn.fetchval("SELECT pgtasks.submit_task('t', priority => 0)")
    high = await conn.fetchval("SELECT pgtasks.submit_task('t', priority => 10)")
    low2 = await conn.fetchval("SELECT pgtasks.submit_task('t', priority => 0)")
    rows = await claim(conn, 3)
    assert [r["id"] for r in rows] == [high, low, low2]
    assert all(r["attempt"] == 1 for r in rows)


async def test_claim_respects_run_at_queue_and_type(conn):
    await conn.execute("SELECT pgtasks.submit_task('t', run_at => now() + interval '1 hour')")
    await conn.execute("SELECT pgtasks.submit_task('t', queue => 'other')")
    await conn.execute("SELECT pgtasks.submit_task('unknown')")
    mine = await conn.fetchval("SELECT pgtasks.submit_task('t')")
    rows = await claim(conn, 10, queues=["default"], task_types=["t"])
    assert [r["id"] for r in rows] == [mine]


async def test_concurrent_claims_never_share_a_task(dsn):
    setup = await db.connect(dsn)
    await setup.execute("SELECT pgtasks.submit_tasks('t', array_fill('{}'::jsonb, ARRAY[200]))")
    conns = [await db.connect(dsn) for _ in range(4)]
    try:

        async def drain(c, name):
            got = []
            while rows := await claim(c, 7, worker=name):
                got += [r["id"] for r in rows]
            return got

        results = await asyncio.gather(*(drain(c, f"w{i}") for i, c in enumerate(conns)))
        flat = [i for r in results for i in r]
        assert len(flat) == 200 and len(set(flat)) == 200
    finally:
        for c in [setup, *conns]:
            await c.close()


async def test_stale_token_cannot_finish_or_fail(conn):
    tid = await conn.fetchval("SELECT pgtasks.submit_task('t')")
    (first,) = await claim(conn)
    # The lease "expires" and the task is rescued, then claimed again (attempt 2).
    await conn.execute(
        "UPDATE pgtasks.tasks SET lease_expires_at = now() - interval '1s' WHERE id=$1", tid
    )
    assert await conn.fetchval("SELECT pgtasks.rescue_expired()") == 1
    await conn.execute("UPDATE pgtasks.tasks SET run_at = now() WHERE id = $1", tid)
    (second,) = await claim(conn, worker="w2")
    assert second["attempt"] == 2 and second["lease_token"] != first["lease_token"]
    for stmt in (
        "SELECT pgtasks.finish_task($1, $2, '\"late\"')",
        "SELECT pgtasks.fail_task($1, $2, 'late error')",
        "SELECT pgtasks.checkpoint($1, $2, 'step', '1')",
        "SELECT pgtasks.report_progress($1, $2, 1, 2)",
        "SELECT pgtasks.yield_task($1, $2)",
        "SELECT pgtasks.log($1, $2, 'info', 'late')",
    ):
        with pytest.raises(asyncpg.PostgresError) as info:
            await conn.execute(stmt, tid, first["lease_token"])
        assert info.value.sqlstate == "PT002", stmt
    row = await conn.fetchrow(
        "SELECT status::text, attempt, worker_id, result FROM pgtasks.tasks WHERE id=$1", tid
    )
    assert tuple(row) == ("RUNNING", 2, "w2", None)
    # the batched completer reports the stale one and finishes only the live one
    rejected = await conn.fetch(
        "SELECT * FROM pgtasks.finish_tasks($1, $2, $3::jsonb[])",
        [tid, tid], [first["lease_token"], second["lease_token"]], ["a", "b"],
    )  # fmt: skip
    assert [r[0] for r in rejected] == [tid]
    row = await conn.fetchrow("SELECT status::text, result FROM pgtasks.tasks WHERE id=$1", tid)
    assert tuple(row) == ("DONE", "b")


async def test_fail_retries_with_backoff_then_fails(conn):
    tid = await conn.fetchval("SELECT pgtasks.submit_task('t', max_retries => 2)")
    for attempt in (1, 2, 3):
        await conn.execute("UPDATE pgtasks.tasks SET run_at = now() WHERE id = $1", tid)
        (row,) = await claim(conn)
        assert row["attempt"] == attempt
        status = await conn.fetchval(
            "SELECT pgtasks.fail_task($1, $2, $3)", tid, row["lease_token"], f"e{attempt}"
        )
        assert status == ("FAILED" if attempt == 3 else "COMMIT")
    errors = await conn.fetch(
        "SELECT attempt, error FROM pgtasks.task_errors WHERE task_id=$1 ORDER BY attempt", tid
    )
    assert [tuple(e) for e in errors] == [(1, "e1"), (2, "e2"), (3, "e3")]
    row = await conn.fetchrow(
        "SELECT status::text, error, retry_count FROM pgtasks.tasks WHERE id=$1", tid
    )
    assert tuple(row) == ("FAILED", "e3", 2)


FINISHES = {
    "finish_task": "SELECT pgtasks.finish_task($1, $2, '1')",
    "finish_tasks": "SELECT * FROM pgtasks.finish_tasks("
    "ARRAY[$1::bigint], ARRAY[$2], ARRAY['1'::jsonb])",
    "finish_and_claim": "SELECT * FROM pgtasks.finish_and_claim("
    "'w1', ARRAY[$1::bigint], ARRAY[$2], ARRAY['1'::jsonb], claim_max => 1)",
}


@pytest.mark.parametrize("finish", FINISHES)
async def test_a_task_done_after_a_failed_attempt_shows_no_error(conn, finish):
    """The row shows its last attempt's outcome; the earlier error stays in task_errors."""
    tid = await conn.fetchval("SELECT pgtasks.submit_task('t', max_retries => 1)")
    (row,) = await claim(conn)
    await conn.execute("SELECT pgtasks.fail_task($1, $2, 'e1')", tid, row["lease_token"])
    await conn.execute("UPDATE pgtasks.tasks SET run_at = now() WHERE id = $1", tid)
    (row,) = await claim(conn)
    assert await conn.fetchval("SELECT error FROM pgtasks.tasks WHERE id=$1", tid) == "e1"
    await conn.execute(FINISHES[finish], tid, row["lease_token"])
    row = await conn.fetchrow(
        "SELECT status::text, error, result FROM pgtasks.tasks WHERE id=$1", tid
    )
    assert tuple(row) == ("DONE", None, 1)
    errors = await conn.fetch(
        "SELECT attempt, error FROM pgtasks.task_errors WHERE task_id=$1", tid
    )
    assert [tuple(e) for e in errors] == [(1, "e1")]


async def test_heartbeat_extends_and_reports_lost(conn):
    a = await conn.fetchval("SELECT pgtasks.submit_task('t')")
    b = await conn.fetchval("SELECT pgtasks.submit_task('t')")
    tokens = {r["id"]: r["lease_token"] for r in await claim(conn, 2)}
    await conn.execute("SELECT pgtasks.cancel_task($1)", b)
    before = await conn.fetchval("SELECT lease_expires_at FROM pgtasks.tasks WHERE id=$1", a)
    lost = await conn.fetch(
        "SELECT * FROM pgtasks.heartbeat('w1', $1, $2, interval '5 minutes')",
        [a, b], [tokens[a], tokens[b]],
    )  # fmt: skip
    assert [r[0] for r in lost] == [b]
    after = await conn.fetchval("SELECT lease_expires_at FROM pgtasks.tasks WHERE id=$1", a)
    assert after > before


async def test_a_client_starting_to_wait_does_not_hide_a_task_from_claims(dsn, conn):
    """watch_task references the task (a key-share lock); claims must still see it."""
    high = await conn.fetchval("SELECT pgtasks.submit_task('t', priority => 9)")
    await conn.fetchval("SELECT pgtasks.submit_task('t')")
    waiter = await db.connect(dsn)
    try:
        async with waiter.transaction():
            await waiter.execute("SELECT pgtasks.watch_task($1)", high)
            rows = await claim(conn)  # while the watcher's transaction is still open
        assert [r["id"] for r in rows] == [high]
    finally:
        await waiter.close()
