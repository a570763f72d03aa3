"""Maintenance the workers run on a timer: pruning finished tasks and sweeping stale rows."""

from __future__ import annotations

from tests.sql.helpers import TOKEN


async def finished_task(conn, age: str) -> int:
    tid = await conn.fetchval("SELECT pgtasks.submit_task('t')")
    await conn.fetch("SELECT * FROM pgtasks.claim_tasks('w', max_tasks => 1)")
    await conn.execute(f"SELECT pgtasks.finish_task($1, {TOKEN}, '1')", tid)
    await conn.execute(
        f"UPDATE pgtasks.tasks SET finished_at = now() - interval '{age}' WHERE id = $1", tid
    )
    return tid


async def test_prune_deletes_old_finished_tasks_with_their_history(conn):
    old = await finished_task(conn, "8 days")
    recent = await finished_task(conn, "1 day")
    pending = await conn.fetchval("SELECT pgtasks.submit_task('t')")
    assert await conn.fetchval("SELECT pgtasks.prune_finished(interval '7 days')") == 1
    left = [r[0] for r in await conn.fetch("SELECT id FROM pgtasks.tasks ORDER BY id")]
    assert left == [recent, pending]
    assert (
        await conn.fetchval("SELECT count(*) FROM pgtasks.task_events WHERE task_id = $1", old) == 0
    )
    assert (
        await conn.fetchval("SELECT count(*) FROM pgtasks.task_events WHERE task_id = $1", recent)
        == 3
    )


async def test_prune_works_in_bounded_batches(conn):
    for _ in range(5):
        await finished_task(conn, "30 days")
    assert await conn.fetchval("SELECT pgtasks.prune_finished(interval '7 days', 2)") == 2
    assert await conn.fetchval("SELECT pgtasks.prune_finished(interval '7 days', 2)") == 2
    assert await conn.fetchval("SELECT pgtasks.prune_finished(interval '7 days', 2)") == 1
    assert await conn.fetchval("SELECT pgtasks.prune_finished(interval '7 days', 2)") == 0


async def test_rescue_sweeps_watchers_whose_connection_is_gone(conn):
    tid = await conn.fetchval("SELECT pgtasks.submit_task('t')")
    await conn.execute("SELECT pgtasks.watch_task($1)", tid)  # this live connection
    await conn.execute("INSERT INTO pgtasks.task_waiters (task_id, pid) VALUES ($1, 0)", tid)
    await conn.fetchval("SELECT pgtasks.rescue_expired()")
    pids = [r[0] for r in await conn.fetch("SELECT pid FROM pgtasks.task_waiters")]
    assert pids == [await conn.fetchval("SELECT pg_backend_pid()")]
