"""Maintainer alone: rescues expired leases and prunes finished tasks past retention."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pgtasks.worker.maintainer import Maintainer
from tests.worker.conftest import claim, status, submit


async def test_rescues_expired_leases_and_prunes_old_tasks(conn, pool):
    stuck, old = await submit(conn, "noop", 2)
    await claim(conn, 2, lease=0.05)  # a worker that then died
    await conn.execute("SELECT pgtasks.finish_task($1, 1)", old)
    await conn.execute("SELECT pgtasks.heartbeat('svc-test', '{}', '{}')")  # register
    await conn.execute(
        "ALTER TABLE pgtasks.tasks DISABLE TRIGGER USER;"
        "UPDATE pgtasks.tasks SET finished_at = now() - interval '8 days' WHERE status = 'DONE';"
        "ALTER TABLE pgtasks.tasks ENABLE TRIGGER USER"
    )
    await asyncio.sleep(0.1)
    rescued_seen: list[int] = []
    m = Maintainer(
        pool,
        interval=1.0,
        retention=timedelta(days=7),
        prune_interval=60.0,
        on_rescued=rescued_seen.append,
    )
    assert await m.run_once() == (1, 1)
    assert rescued_seen == [1]
    assert await status(conn, stuck) == "COMMIT"
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.tasks WHERE id = $1", old) == 0
    assert await m.run_once() == (0, 0)  # prune is not due again before prune_interval


async def test_by_default_it_calls_maintain_with_the_database_settings(conn, pool):
    [tid] = await submit(conn, "noop")
    await claim(conn, 1, lease=0.05)
    await asyncio.sleep(0.1)
    m = Maintainer(pool, interval=1.0)  # no retention of its own: settings.retention
    assert await m.run_once() == (1, 0)
    assert await status(conn, tid) == "COMMIT"
