"""TaskWriter alone: progress writes of many tasks share one statement; a task whose lease
is lost hears LeaseLost while the others' progress is still written."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from pgtasks import LeaseLost
from pgtasks.worker.writer import TaskWriter
from tests.worker.conftest import claim, submit


async def test_progress_of_many_tasks_in_one_statement_and_a_lost_one_alone(conn, pool):
    ids = await submit(conn, "noop", 4)
    rows = {r["id"]: r for r in await claim(conn, 4)}
    lost = ids[2]
    await conn.execute("SELECT pgtasks.cancel_task($1)", lost)
    writer = TaskWriter(pool)
    results = await asyncio.gather(
        *(writer.progress(t, rows[t]["lease_token"], 3, 10, f"task {t}") for t in ids),
        return_exceptions=True,
    )
    assert [isinstance(r, LeaseLost) for r in results] == [False, False, True, False]
    got = await conn.fetch(
        "SELECT id, progress_current, progress_message FROM pgtasks.tasks"
        " WHERE id = ANY($1) ORDER BY id",
        ids,
    )
    for r in got:
        if r["id"] == lost:
            assert r["progress_current"] is None
        else:
            assert (r["progress_current"], r["progress_message"]) == (3, f"task {r['id']}")
    with pytest.raises(LeaseLost):
        await writer.progress(lost, rows[lost]["lease_token"], 4, 10, None)


async def test_log_batches_of_many_tasks_in_one_statement_keep_their_order(conn, pool):
    ids = await submit(conn, "noop", 3)
    rows = {r["id"]: r for r in await claim(conn, 3)}
    lost = ids[1]
    await conn.execute("SELECT pgtasks.cancel_task($1)", lost)
    writer = TaskWriter(pool)
    now = datetime.now(UTC)
    lines = {t: [("INFO", f"{t}-{i}", "app", now) for i in range(5)] for t in ids}
    results = await asyncio.gather(
        *(writer.logs(t, rows[t]["lease_token"], lines[t]) for t in ids), return_exceptions=True
    )
    assert [isinstance(r, LeaseLost) for r in results] == [False, True, False]
    for t in ids:
        got = await conn.fetch(
            "SELECT message, logger FROM pgtasks.task_log_lines WHERE task_id = $1 ORDER BY id", t
        )
        expected = [] if t == lost else [(f"{t}-{i}", "app") for i in range(5)]
        assert [(r["message"], r["logger"]) for r in got] == expected


async def test_writes_that_wait_together_share_one_statement(conn, pool):
    ids = await submit(conn, "noop", 3)
    rows = {r["id"]: r for r in await claim(conn, 3)}
    writer = TaskWriter(pool)
    now = datetime.now(UTC)
    await asyncio.gather(
        *(writer.progress(t, rows[t]["lease_token"], 1, 2, None) for t in ids),
        *(writer.logs(t, rows[t]["lease_token"], [("INFO", "x", None, now)] * 2) for t in ids),
    )
    assert writer.progress_writes.statements == 1 and writer.log_writes.statements == 1
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.task_log_lines") == 6
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.tasks WHERE progress_current = 1") == 3


async def test_lines_over_the_database_limit_are_clipped_not_refused(conn, pool):
    """A line over settings.max_log_bytes would make log_many refuse its whole batch
    (PT204); the writer clips it to the database's limit instead, and says so."""
    limit = await conn.fetchval("SELECT max_log_bytes FROM pgtasks.current_settings()")
    (task_id,) = await submit(conn, "noop", 1)
    (row,) = await claim(conn, 1)
    writer = TaskWriter(pool, max_log_bytes=limit)
    huge = "é" * limit  # two bytes a character: twice the limit
    now = datetime.now(UTC)
    await writer.logs(
        task_id, row["lease_token"], [("INFO", "short", None, now), ("INFO", huge, None, now)]
    )
    await writer.progress(task_id, row["lease_token"], 1, 2, huge)
    got = await conn.fetch(
        "SELECT message FROM pgtasks.task_log_lines WHERE task_id = $1 ORDER BY id", task_id
    )
    assert got[0]["message"] == "short"
    clipped = got[1]["message"]
    assert len(clipped.encode()) <= limit and clipped.startswith("éé")
    assert clipped.endswith("clipped to max_log_bytes]")
    message = await conn.fetchval(
        "SELECT progress_message FROM pgtasks.tasks WHERE id = $1", task_id
    )
    assert len(message.encode()) <= limit
