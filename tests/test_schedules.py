"""Schedules with real worker processes: exactly one task per tick across a
fleet, through a kill -9 of the firing worker and a database restart; the catch-up window
after an outage; the overlap policies; declarations in code.

Every wait is for a state in the database; the timeouts only bound a hung test.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import time, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from pgtasks import Client
from pgtasks.embedded import EmbeddedPostgres
from pgtasks.errors import InvalidSchedule, ScheduleNotFound
from tests.fleet import Fleet, fresh_conn, start_private_server, wait_until

APP = "tests/apps/schedules.py"
WORKER_ARGS = ("--lease", "2", "--concurrency", "4", "--poll-interval", "0.5")


@pytest.fixture
async def private_server(tmp_path) -> AsyncIterator[tuple[EmbeddedPostgres, str]]:
    server, url = await start_private_server(tmp_path / "pg")
    try:
        yield server, url
    finally:
        await asyncio.to_thread(server.destroy)


@pytest.fixture
def fleet(dsn: str, tmp_path):
    f = Fleet(dsn, tmp_path / "logs")
    try:
        yield f
    finally:
        f.stop_all()


async def ticks_of(conn: asyncpg.Connection, name: str) -> list:
    rows = await conn.fetch(
        "SELECT schedule_tick FROM pgtasks.tasks WHERE schedule = $1 ORDER BY schedule_tick", name
    )
    return [r[0] for r in rows]


def consecutive(ticks: list, step: timedelta) -> bool:
    return all(b - a == step for a, b in itertools.pairwise(ticks))


async def count_ticks(url: str, name: str) -> int:
    async with fresh_conn(url) as conn:
        return len(await ticks_of(conn, name))


@pytest.mark.slow
async def test_four_workers_one_task_per_tick_through_kill_and_restart(private_server, tmp_path):
    server, url = private_server
    fleet = Fleet(url, tmp_path / "logs")
    try:
        create = (
            "SELECT pgtasks.create_schedule(name => 'every-second', task_type => 'tick',"
            " every => '1 second', catch_up => $1)"
        )
        async with fresh_conn(url) as conn:
            await conn.execute(create, timedelta(0))  # the default: no catch-up
        for _ in range(4):
            fleet.start(*WORKER_ARGS, app=APP)
        q = "SELECT count(*) >= $1 FROM pgtasks.tasks WHERE schedule = 'every-second'"
        await wait_until(url, q, 6, fleet=fleet)
        async with fresh_conn(url) as conn:
            # Normal running: four workers, no tick skipped or doubled.
            ticks = await ticks_of(conn, "every-second")
            assert consecutive(ticks, timedelta(seconds=1)), ticks
            # catch_up covers the outages below: every missed tick must still run, once.
            # (An update that keeps the timing keeps next_run_at.)
            await conn.execute(create, timedelta(minutes=1))
            # Ticks due before the four workers were up (Python start-up on a loaded machine
            # can take over the 2 s grace) were skipped under catch_up 0, as designed; from
            # here on, none may be.
            skipped_before = await conn.fetchval(
                "SELECT skipped FROM pgtasks.schedules WHERE name = 'every-second'"
            )

        # kill -9 the worker that fired last (its claim may be held: it expires by itself).
        async with fresh_conn(url) as conn:
            firing = await conn.fetchval(
                "SELECT fired_by FROM pgtasks.schedules WHERE name = 'every-second'"
            )
        victims = [p for p in fleet.alive() if f"-{p.pid}-" in (firing or "")]
        assert len(victims) == 1, firing
        Fleet.kill(victims[0])
        n = await count_ticks(url, "every-second")
        await wait_until(url, q, n + 3, fleet=fleet)

        await asyncio.to_thread(server.restart)  # every connection is cut
        n = await count_ticks(url, "every-second")
        await wait_until(url, q, n + 5, timeout=120, fleet=fleet)
        await wait_until(url, q, 18, timeout=120, fleet=fleet)

        async with fresh_conn(url) as conn:
            await conn.execute("SELECT pgtasks.pause_schedule(name => 'every-second')")
            ticks = await ticks_of(conn, "every-second")
            s = await conn.fetchrow("SELECT * FROM pgtasks.schedules WHERE name = 'every-second'")
        assert len(ticks) == len(set(ticks)) >= 18, "no tick twice"
        assert consecutive(ticks, timedelta(seconds=1)), ticks
        assert s["skipped"] == skipped_before and s["last_tick"] == ticks[-1]
        assert len(fleet.alive()) == 3, fleet.tails()
    finally:
        fleet.stop_all()


@pytest.mark.slow
async def test_outage_catch_up_window_runs_recent_ticks_and_counts_older(dsn, conn, fleet):
    await conn.execute(
        "SELECT pgtasks.create_schedule(name => 'catch', task_type => 'tick',"
        " every => '1 second', catch_up => '5 seconds')"
    )
    fleet.start(*WORKER_ARGS, app=APP)
    fleet.start(*WORKER_ARGS, app=APP)
    q = "SELECT count(*) >= $1 FROM pgtasks.tasks WHERE schedule = 'catch'"
    await wait_until(dsn, q, 3, fleet=fleet)
    fleet.stop_all()  # no worker at all
    before = await ticks_of(conn, "catch")
    # An outage on the database's clock: the next tick (due within a second when the
    # workers stopped) is at least 10 s overdue.
    await conn.execute("SELECT pgtasks.advance_clock(interval '11 seconds')")
    assert await conn.fetchval(
        "SELECT pgtasks.now() - next_run_at >= interval '10 seconds' FROM pgtasks.schedules"
        " WHERE name = 'catch'"
    )
    fleet.start(*WORKER_ARGS, app=APP)
    await wait_until(dsn, q, len(before) + 8, fleet=fleet)
    await conn.execute("SELECT pgtasks.pause_schedule(name => 'catch')")

    ticks = await ticks_of(conn, "catch")
    s = await conn.fetchrow("SELECT * FROM pgtasks.schedules WHERE name = 'catch'")
    assert len(ticks) == len(set(ticks))
    gaps = [(b - a).total_seconds() - 1 for a, b in itertools.pairwise(ticks)]
    missing = [int(g) for g in gaps if g > 0]
    # One hole: the ticks older than the window when the new worker fired, counted.
    assert len(missing) == 1 and s["skipped"] == missing[0], (gaps, s["skipped"])
    assert missing[0] >= 4  # 10 s without workers, a 5 s window (and worker start-up)
    hole = gaps.index(missing[0]) + 1
    # The ticks within the window, once each, oldest first: at least 5 in a row at once.
    caught_up = await conn.fetch(
        "SELECT schedule_tick, created_at FROM pgtasks.tasks WHERE schedule = 'catch'"
        " AND schedule_tick >= $1 ORDER BY schedule_tick",
        ticks[hole],
    )
    first_batch = [r for r in caught_up if r["created_at"] == caught_up[0]["created_at"]]
    assert len(first_batch) >= 5, [dict(r) for r in caught_up]


@pytest.mark.slow
async def test_workers_stopped_longer_than_the_misfire_grace_skip_the_stale_tick(dsn, conn, fleet):
    """Every minute, grace 5 s: the tick that came due while no worker ran is found about
    20 s late, skipped and counted; the next one runs."""
    await conn.execute(
        "SELECT pgtasks.create_schedule(name => 'graced', task_type => 'tick',"
        " every => '1 minute', misfire_grace => '5 seconds')"
    )
    to_next_tick = (
        "SELECT pgtasks.advance_clock(next_run_at - pgtasks.now() + $1::interval)"
        " FROM pgtasks.schedule_defs WHERE name = 'graced'"
    )
    count = "SELECT count(*) FROM pgtasks.tasks WHERE schedule = 'graced'"
    await conn.execute(to_next_tick, timedelta(milliseconds=500))
    fleet.start(*WORKER_ARGS, app=APP)
    await wait_until(dsn, f"SELECT ({count}) = 1", fleet=fleet)
    fleet.stop_all()  # no worker at all
    stale = await conn.fetchval("SELECT next_run_at FROM pgtasks.schedules WHERE name = 'graced'")
    await conn.execute(to_next_tick, timedelta(seconds=20))
    fleet.start(*WORKER_ARGS, app=APP)
    q = "SELECT skipped_misfire = 1 FROM pgtasks.schedules WHERE name = 'graced'"
    await wait_until(dsn, q, fleet=fleet)
    assert await conn.fetchval(count) == 1
    await conn.execute(to_next_tick, timedelta(milliseconds=500))
    await wait_until(dsn, f"SELECT ({count}) = 2", fleet=fleet)
    ticks = await ticks_of(conn, "graced")
    assert stale not in ticks and ticks[1] == stale + timedelta(minutes=1), (ticks, stale)
    s = await conn.fetchrow("SELECT * FROM pgtasks.schedules WHERE name = 'graced'")
    assert (s["skipped"], s["skipped_misfire"]) == (0, 1)


@pytest.mark.slow
async def test_overlap_skip_and_cancel_previous_with_tasks_longer_than_the_interval(
    dsn, conn, fleet
):
    for name, overlap in (("skipper", "skip"), ("canceller", "cancel_previous")):
        await conn.execute(
            "SELECT pgtasks.create_schedule(name => $1, task_type => 'slow', every => '1 second',"
            " overlap => $2, params => '{\"seconds\": 2.5}')",
            name,
            overlap,
        )
    fleet.start(*WORKER_ARGS, app=APP)
    fleet.start(*WORKER_ARGS, app=APP)
    active = (
        "SELECT count(*) FROM pgtasks.tasks WHERE schedule = $1"
        " AND status IN ('PENDING', 'RUNNING', 'COMMIT')"
    )
    # skip: three ticks skipped, and a task started after the first one ended;
    # cancel_previous: three tasks cancelled by the tick after them.
    overlapped = (
        "SELECT (SELECT skipped_overlap >= 3 FROM pgtasks.schedules WHERE name = 'skipper')"
        " AND (SELECT count(*) >= 2 FROM pgtasks.tasks WHERE schedule = 'skipper')"
        " AND (SELECT count(*) >= 3 FROM pgtasks.tasks WHERE schedule = 'canceller'"
        " AND status = 'CANCELLED')"
    )
    seen: dict[str, int] = {"skipper": 0, "canceller": 0}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 90  # only bounds a hung test
    # Sample while ticks come in, until both policies have shown the above.
    while True:
        for name in seen:
            seen[name] = max(seen[name], await conn.fetchval(active, name))
        if await conn.fetchval(overlapped):
            break
        assert loop.time() < deadline, fleet.tails()
        await asyncio.sleep(0.1)
    for name in seen:
        await conn.execute("SELECT pgtasks.pause_schedule(name => $1)", name)
    assert seen == {"skipper": 1, "canceller": 1}

    # skip: the active spans [created_at, finished_at] never overlap.
    spans = await conn.fetch(
        "SELECT created_at, coalesce(finished_at, 'infinity') AS end_at FROM pgtasks.tasks"
        " WHERE schedule = 'skipper' ORDER BY created_at"
    )
    assert len(spans) >= 2
    assert all(a["end_at"] <= b["created_at"] for a, b in itertools.pairwise(spans))
    assert await conn.fetchval(
        "SELECT count(*) FROM pgtasks.tasks WHERE schedule = 'skipper' AND status = 'CANCELLED'"
    ) == 0  # fmt: skip
    # cancel_previous: each new tick cancelled the one before it.
    statuses = await conn.fetch(
        "SELECT status FROM pgtasks.tasks WHERE schedule = 'canceller' ORDER BY schedule_tick"
    )
    assert all(r[0] == "CANCELLED" for r in statuses[:-1])


@pytest.mark.slow
async def test_worker_declares_its_schedules_and_keeps_sql_made_ones(dsn, conn, fleet):
    # Made through SQL first, under a name the app also declares: kept as it is.
    await conn.execute(
        "SELECT pgtasks.create_schedule(name => 'report-monthly', task_type => 'report',"
        " cron => '0 8 1 * *')"
    )
    fleet.start(*WORKER_ARGS, app=APP)
    await wait_until(dsn, "SELECT count(*) = 3 FROM pgtasks.schedules", fleet=fleet)
    rows = {r["name"]: r for r in await conn.fetch("SELECT * FROM pgtasks.schedules")}
    assert rows["report"]["cron"] == "0 6 * * *" and rows["report"]["timezone"] == "Europe/Berlin"
    assert rows["report"]["origin"] == "code"
    assert rows["report-weekly"]["params"] == {"kind": "weekly"}
    assert rows["report-monthly"]["cron"] == "0 8 1 * *"  # the SQL one, untouched
    assert rows["report-monthly"]["origin"] == "sql"
    # The worker computes the first tick of each cron schedule (06:00 Berlin, 04:00 or
    # 05:00 UTC).
    await wait_until(
        dsn, "SELECT bool_and(next_run_at IS NOT NULL) FROM pgtasks.schedules", fleet=fleet
    )
    nxt = await conn.fetchval("SELECT next_run_at FROM pgtasks.schedules WHERE name = 'report'")
    assert nxt.astimezone(ZoneInfo("Europe/Berlin")).time() == time(6, 0)


async def test_client_schedules_and_typed_errors(dsn):
    async with Client(dsn) as client:
        await client.create_schedule("c", "tick", cron="*/5 * * * *", timezone="Europe/Berlin")
        await client.create_schedule("e", "tick", every=30, overlap="skip", catch_up=60)
        rows = {r["name"]: r for r in await client.schedules()}
        assert rows["e"]["every"] == timedelta(seconds=30) and rows["e"]["overlap"] == "skip"
        tid = await client.trigger_schedule("c")
        assert (await client.get(tid)).status == "PENDING"
        with pytest.raises(InvalidSchedule) as info:
            await client.create_schedule("bad", "tick", cron="0 6 * *")
        assert info.value.sqlstate == "PT401" and info.value.hint
        with pytest.raises(InvalidSchedule):
            await client.create_schedule("bad", "tick", every=1, timezone="Nowhere/Land")
        with pytest.raises(ScheduleNotFound):
            await client.pause_schedule("nope")
        await client.drop_schedule("c")
        assert [r["name"] for r in await client.schedules()] == ["e"]
