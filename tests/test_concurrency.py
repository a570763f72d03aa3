"""Several worker processes on one database never run the same task at the same time."""

from __future__ import annotations

import pytest

from pgtasks import Client
from tests.conftest import wait_for


@pytest.mark.slow
async def test_four_processes_drain_2000_tasks_exactly_once(dsn, conn, spawn_worker):
    async with Client(dsn) as client:
        await client.submit_many("recorded", [{"i": i} for i in range(2000)])
    procs = [spawn_worker.start("--concurrency", "8", "--poll-interval", "0.2") for _ in range(4)]
    await wait_for(
        conn, "SELECT count(*) = 2000 FROM pgtasks.tasks WHERE status = 'DONE'", timeout=240
    )
    assert all(p.poll() is None for p in procs), "a worker process died"
    runs = await conn.fetchrow(
        "SELECT count(*) AS runs, count(DISTINCT task_id) AS tasks, "
        "count(DISTINCT pid) AS connections FROM test_runs"
    )
    assert runs["tasks"] == 2000
    assert runs["runs"] == 2000, "some task ran twice"
    claimed_by = await conn.fetch(
        "SELECT worker_id, count(*) FROM pgtasks.task_events WHERE to_status = 'RUNNING' "
        "GROUP BY worker_id"
    )
    assert len(claimed_by) == 4, "all four workers took part"
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.tasks WHERE attempt <> 1") == 0
