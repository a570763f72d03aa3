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
        *(writer.progress(t, rows[t]["attempt"], 3, 10, f"task {t}") for t in ids),
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
        await writer.progress(lost, rows[lost]["attempt"], 4, 10, None)


async def test_log_batches_of_many_tasks_in_one_statement_keep_their_order(conn, pool):
    ids = await submit(conn, "noop", 3)
    rows = {r["id"]: r for r in await claim(conn, 3)}
    lost = ids[1]
    await conn.execute("SELECT pgtasks.cancel_task($1)", lost)
    writer = TaskWriter(pool)
    now = datetime.now(UTC)
    lines = {t: [("INFO", f"{t}-{i}", "app", now) for i in range(5)] for t in ids}
    results = await asyncio.gather(
        *(writer.logs(t, rows[t]["attempt"], lines[t]) for t in ids), return_exceptions=True
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
        *(writer.progress(t, rows[t]["attempt"], 1, 2, None) for t in ids),
        *(writer.logs(t, rows[t]["attempt"], [("INFO", "x", None, now)] * 2) for t in ids),
    )
    assert writer.progress_writes.statements == 1 and writer.log_writes.statements == 1
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.task_log_lines") == 6
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.tasks WHERE progress_current = 1") == 3
