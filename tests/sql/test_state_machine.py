"""The state machine is enforced by the database, whoever writes the UPDATE."""

from __future__ import annotations

import itertools

import asyncpg
import pytest

from tests.sql.helpers import TOKEN

STATES = ["WAITING", "PENDING", "RUNNING", "COMMIT", "DONE", "FAILED", "CANCELLED"]
ALLOWED = {
    ("PENDING", "RUNNING"), ("COMMIT", "RUNNING"), ("RUNNING", "COMMIT"), ("RUNNING", "DONE"),
    ("RUNNING", "FAILED"), ("PENDING", "CANCELLED"), ("COMMIT", "CANCELLED"),
    ("RUNNING", "CANCELLED"), ("FAILED", "PENDING"), ("CANCELLED", "PENDING"),
    # 0012 (workflows): a task with unfinished parents waits
    ("WAITING", "PENDING"), ("WAITING", "CANCELLED"), ("FAILED", "WAITING"),
    ("CANCELLED", "WAITING"),
}  # fmt: skip


async def make_task_in(conn: asyncpg.Connection, state: str) -> int:
    """Drive a task to `state` through the SQL API only."""
    if state == "WAITING":
        parent = await conn.fetchval("SELECT pgtasks.submit_task('parent', queue => 'elsewhere')")
        return await conn.fetchval(
            "SELECT pgtasks.submit_task('t', depends_on => ARRAY[$1]::bigint[])", parent
        )
    tid = await conn.fetchval("SELECT pgtasks.submit_task('t')")
    if state == "PENDING":
        return tid
    await conn.fetch("SELECT * FROM pgtasks.claim_tasks('w', max_tasks => 1)")
    if state == "RUNNING":
        return tid
    if state == "COMMIT":
        await conn.execute(f"SELECT pgtasks.yield_task($1, {TOKEN})", tid)
    elif state == "DONE":
        await conn.execute(f"SELECT pgtasks.finish_task($1, {TOKEN}, '{{}}')", tid)
    elif state == "FAILED":
        await conn.execute(f"SELECT pgtasks.fail_task($1, {TOKEN}, 'x', retryable => false)", tid)
    elif state == "CANCELLED":
        await conn.execute("SELECT pgtasks.cancel_task($1)", tid)
    assert await conn.fetchval("SELECT status::text FROM pgtasks.tasks WHERE id=$1", tid) == state
    return tid


async def test_transitions_table_is_the_documented_set(conn):
    rows = await conn.fetch("SELECT from_status::text, to_status::text FROM pgtasks.transitions")
    assert {(r[0], r[1]) for r in rows} == ALLOWED


@pytest.mark.parametrize(
    ("src", "dst"),
    [p for p in itertools.product(STATES, STATES) if p[0] != p[1] and p not in ALLOWED],
)
async def test_illegal_raw_update_is_rejected(conn, src, dst):
    tid = await make_task_in(conn, src)
    with pytest.raises(asyncpg.PostgresError) as info:
        await conn.execute("UPDATE pgtasks.tasks SET status = $2 WHERE id = $1", tid, dst)
    assert info.value.sqlstate == "PT001"
    assert f"from {src} to {dst}" in info.value.message
    assert await conn.fetchval("SELECT status::text FROM pgtasks.tasks WHERE id=$1", tid) == src


async def test_raw_update_pending_to_done_names_the_transition(conn):
    tid = await conn.fetchval("SELECT pgtasks.submit_task('t')")
    with pytest.raises(asyncpg.PostgresError) as info:
        await conn.execute(
            "UPDATE pgtasks.tasks SET status = 'DONE', finished_at = now() WHERE id = $1", tid
        )
    assert info.value.sqlstate == "PT001"
    assert "cannot go from PENDING to DONE" in info.value.message


async def test_allowed_transition_still_needs_consistent_columns(conn):
    """PENDING -> RUNNING is allowed, but not without a worker and lease (CHECK constraint)."""
    tid = await conn.fetchval("SELECT pgtasks.submit_task('t')")
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute("UPDATE pgtasks.tasks SET status = 'RUNNING' WHERE id = $1", tid)
    # Every lease column but the token: a running attempt nobody could ever present.
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute(
            "UPDATE pgtasks.tasks SET status = 'RUNNING', attempt = 1, worker_id = 'w',"
            " started_at = now(), deadline = now() + timeout, lease_expires_at = now()"
            " WHERE id = $1",
            tid,
        )


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("retry_count", "99"),
        ("max_retries", "-1"),
        ("progress_current", "5"),  # total is set to 2 below
        ("params", "'[1]'::jsonb"),
        ("task_type", "''"),
        ("worker_id", "'w'"),  # a worker on a PENDING task
        ("finished_at", "now()"),  # finished_at on a non-terminal task
        ("result", "'1'::jsonb"),  # a result on a non-DONE task
        ("lease_token", "'x'"),  # a lease token on a task nobody holds
    ],
)
async def test_check_constraints(conn, column, value):
    tid = await conn.fetchval("SELECT pgtasks.submit_task('t')")
    await conn.execute("UPDATE pgtasks.tasks SET progress_total = 2 WHERE id = $1", tid)
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute(f"UPDATE pgtasks.tasks SET {column} = {value} WHERE id = $1", tid)


async def test_insert_must_start_pending(conn):
    with pytest.raises(asyncpg.PostgresError) as info:
        await conn.execute(
            "INSERT INTO pgtasks.tasks (task_type, status, finished_at, result) "
            "VALUES ('t', 'DONE', now(), '1')"
        )
    assert info.value.sqlstate == "PT001"


async def test_every_transition_is_recorded(conn):
    tid = await make_task_in(conn, "FAILED")
    await conn.execute("SELECT pgtasks.retry_task($1)", tid)
    rows = await conn.fetch(
        "SELECT from_status::text, to_status::text, attempt, worker_id "
        "FROM pgtasks.task_history WHERE task_id = $1 ORDER BY at, to_status",
        tid,
    )
    assert [(r[0], r[1]) for r in rows] == [
        (None, "PENDING"), ("PENDING", "RUNNING"), ("RUNNING", "FAILED"), ("FAILED", "PENDING"),
    ]  # fmt: skip
    assert rows[1]["worker_id"] == "w" and rows[1]["attempt"] == 1


async def test_manual_retry_only_from_failed_or_cancelled(conn):
    tid = await make_task_in(conn, "FAILED")
    await conn.execute("SELECT pgtasks.retry_task($1)", tid)
    row = await conn.fetchrow(
        "SELECT status::text, retry_count FROM pgtasks.tasks WHERE id=$1", tid
    )
    assert tuple(row) == ("PENDING", 0)
    with pytest.raises(asyncpg.PostgresError) as info:
        await conn.execute("SELECT pgtasks.retry_task($1)", tid)
    assert info.value.sqlstate == "PT001"
