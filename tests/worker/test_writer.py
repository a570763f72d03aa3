"""TaskWriter alone: progress writes of many tasks share one statement; a task whose lease
is lost hears LeaseLost while the others' progress is still written."""

from __future__ import annotations

import asyncio

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
