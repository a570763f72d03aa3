"""Maintainer alone: rescues expired leases and prunes finished tasks past retention."""

from __future__ import annotations

from datetime import timedelta

from pgtasks.worker.maintainer import Maintainer
from tests.conftest import wait_for
from tests.sql.helpers import TOKEN
from tests.worker.conftest import claim, status, submit


async def test_rescues_expired_leases_and_prunes_old_tasks(conn, pool):
    stuck, old = await submit(conn, "noop", 2)
    await claim(conn, 2)  # a worker that then died
    await conn.execute(f"SELECT pgtasks.finish_task($1, {TOKEN})", old)
    await conn.execute("SELECT pgtasks.heartbeat('svc-test', '{}', '{}')")  # register
    early = Maintainer(pool, interval=1.0, retention=timedelta(days=7))
    assert await early.run_once() == (0, 0)  # the lease holds, the task is fresh
    # Eight days on the database's clock: past the 60 s lease and the 7 days' retention.
    await conn.execute("SELECT pgtasks.advance_clock(interval '8 days')")
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
    await claim(conn, 1, lease=60)
    m = Maintainer(pool, interval=1.0)  # no retention of its own: settings.retention
    assert await m.run_once() == (0, 0)
    await conn.execute("SELECT pgtasks.advance_clock(interval '61 seconds')")
    assert await m.run_once() == (1, 0)
    assert await status(conn, tid) == "COMMIT"


async def test_fires_due_schedules_cron_ticks_from_python_every_ticks_from_sql(conn, pool):
    # The database's clock at half past a minute: the wall time this test takes stays far
    # from a minute's edge, so every count below is exact.
    await conn.execute(
        "SELECT pgtasks.advance_clock("
        " date_trunc('minute', pgtasks.now()) + interval '90 seconds' - pgtasks.now())"
    )
    await conn.execute(
        "SELECT pgtasks.create_schedule(name => 'minutely', task_type => 'noop',"
        " cron => '* * * * *', catch_up => '10 minutes', timezone => 'Europe/Berlin');"
        "SELECT pgtasks.create_schedule(name => 'every-minute', task_type => 'noop',"
        " every => '1 minute', catch_up => '3 minutes')"
    )
    m = Maintainer(pool, interval=60.0)
    # A new cron schedule gets its first next_run_at (computed in Python from the
    # database's time), nothing fires.
    assert await m.fire_schedules() == 0
    nxt = await conn.fetchval("SELECT next_run_at FROM pgtasks.schedules WHERE name='minutely'")
    assert nxt == await conn.fetchval("SELECT date_trunc('minute', pgtasks.now()) + '1 minute'")
    # No worker for 4 minutes: the ticks at +1, +2, +3 and +4 minutes are due.
    await conn.execute("SELECT pgtasks.advance_clock(interval '4 minutes')")
    fired = await m.fire_schedules()
    rows = await conn.fetch(
        "SELECT schedule, count(*) AS n FROM pgtasks.tasks GROUP BY schedule ORDER BY schedule"
    )
    counts = {r["schedule"]: r["n"] for r in rows}
    assert counts == {"minutely": 4, "every-minute": 3}  # every-minute: its 3 minutes' window
    skipped = dict(await conn.fetch("SELECT name, skipped FROM pgtasks.schedules"))
    assert skipped == {"minutely": 0, "every-minute": 1}
    assert fired == 7
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
        "SELECT pgtasks.create_schedule(name => 'fine', task_type => 'noop', every => '1 hour');"
        # Hand-written SQL past create_schedule's checks: no parser reads this.
        "UPDATE pgtasks.schedule_defs SET cron = 'x y z w v' WHERE name = 'broken';"
        # The clock at fine's first tick: exactly one is due, the next an hour later.
        "SELECT pgtasks.advance_clock(greatest(next_run_at - pgtasks.now(), '1 us'))"
        " FROM pgtasks.schedules WHERE name = 'fine'"
    )
    assert await Maintainer(pool, interval=60.0).fire_schedules() == 1
    assert await conn.fetchval("SELECT schedule FROM pgtasks.tasks") == "fine"
