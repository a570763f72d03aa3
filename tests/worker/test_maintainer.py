"""Maintainer alone: rescues expired leases and prunes finished tasks past retention."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pgtasks.worker.maintainer import Maintainer
from tests.conftest import wait_for
from tests.sql.helpers import TOKEN
from tests.worker.conftest import claim, status, submit


async def test_rescues_expired_leases_and_prunes_old_tasks(conn, pool):
    stuck, old = await submit(conn, "noop", 2)
    await claim(conn, 2, lease=0.05)  # a worker that then died
    await conn.execute(f"SELECT pgtasks.finish_task($1, {TOKEN})", old)
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


async def test_fires_due_schedules_cron_ticks_from_python_every_ticks_from_sql(conn, pool):
    await conn.execute(
        "SELECT pgtasks.create_schedule(name => 'minutely', task_type => 'noop',"
        " cron => '* * * * *', catch_up => '10 minutes', timezone => 'Europe/Berlin');"
        "SELECT pgtasks.create_schedule(name => 'secondly', task_type => 'noop',"
        " every => '1 second', catch_up => '3 seconds')"
    )
    m = Maintainer(pool, interval=60.0)
    # A new cron schedule gets its first next_run_at (computed in Python), nothing fires.
    assert await m.fire_schedules() == 0
    nxt = await conn.fetchval("SELECT next_run_at FROM pgtasks.schedules WHERE name='minutely'")
    assert nxt is not None and nxt.second == 0
    # As if no worker had run for 3 minutes: the 3 missed minutes and the current one.
    await conn.execute(
        "UPDATE pgtasks.schedule_defs SET claimed_until = NULL,"
        " next_run_at = date_trunc('minute', now()) - interval '3 minutes'"
        " WHERE name = 'minutely';"
        "UPDATE pgtasks.schedule_defs SET claimed_until = NULL,"
        " next_run_at = date_bin('1 second', now(), 'epoch') - interval '10 seconds'"
        " WHERE name = 'secondly'"
    )
    fired = await m.fire_schedules()
    rows = await conn.fetch(
        "SELECT schedule, count(*) AS n FROM pgtasks.tasks GROUP BY schedule ORDER BY schedule"
    )
    counts = {r["schedule"]: r["n"] for r in rows}
    assert counts["minutely"] == 4
    assert 3 <= counts["secondly"] <= 5  # the window (3 s) and the latest tick
    assert fired == counts["minutely"] + counts["secondly"]
    assert await m.fire_schedules() == 0  # claimed or not due: nothing twice


async def test_run_fires_schedules_every_schedule_interval_between_maintenance(conn, pool):
    await conn.execute(
        "SELECT pgtasks.create_schedule(name => 's', task_type => 'noop', every => '1 second');"
        "UPDATE pgtasks.schedule_defs SET next_run_at = now() - interval '0.5 second'"
    )
    m = Maintainer(pool, interval=3600.0, schedule_interval=0.05, worker_id="w-1")
    m.start()
    try:
        await wait_for(conn, "SELECT count(*) >= 1 FROM pgtasks.tasks WHERE schedule = 's'")
    finally:
        await m.stop()
    assert await conn.fetchval("SELECT fired_by FROM pgtasks.schedules") == "w-1"


async def test_a_broken_schedule_does_not_stop_the_others(conn, pool):
    await conn.execute(
        "SELECT pgtasks.create_schedule(name => 'broken', task_type => 'noop', cron => '@daily');"
        "SELECT pgtasks.create_schedule(name => 'fine', task_type => 'noop', every => '1 second');"
        # Hand-written SQL past create_schedule's checks: no parser reads this.
        "UPDATE pgtasks.schedule_defs SET cron = 'x y z w v' WHERE name = 'broken';"
        "UPDATE pgtasks.schedule_defs SET next_run_at = now() - interval '0.5 second'"
    )
    assert await Maintainer(pool, interval=60.0).fire_schedules() == 1
    assert await conn.fetchval("SELECT schedule FROM pgtasks.tasks") == "fine"
