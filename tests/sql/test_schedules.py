"""Schedules in SQL (sql/0006): validation, upsert, the missed-tick and overlap
policies, and the (schedule, tick) uniqueness that makes firing exactly-once.

Firing tests run inside one transaction, where now() stands still, and move next_run_at
back by hand (as if no worker had run), so the expected ticks are exact."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from croniter import croniter

from tests.conftest import wait_blocked
from tests.sql.helpers import raises

CREATE = "SELECT pgtasks.create_schedule(name => $1, task_type => 'job', {})"


@pytest.mark.parametrize(
    ("args", "sqlstate"),
    [
        ("cron => '0 6 * *'", "PT401"),  # 4 fields
        ("cron => '61 * * * *'", "PT401"),
        ("cron => '0 24 * * *'", "PT401"),
        ("cron => '0 0 0 * *'", "PT401"),
        ("cron => '0 0 * 13 *'", "PT401"),
        ("cron => '0 0 * * 8'", "PT401"),
        ("cron => '*/0 * * * *'", "PT401"),
        ("cron => '0 0 L * *'", "PT401"),
        ("cron => '5-1 * * * *'", "PT401"),
        ("cron => '0 0 * foo *'", "PT401"),
        ("cron => ''", "PT401"),
        ("cron => '0 6 * * *', timezone => 'Mars/Olympus'", "PT402"),
        ("cron => '0 6 * * *', timezone => NULL", "PT402"),
        ("every => '0 seconds'", "PT403"),
        ("every => '-1 second'", "PT403"),
        ("every => '1 month'", "PT403"),
        ("task_type => 'job'", "PT404"),
        ("cron => '* * * * *', every => '1 minute'", "PT404"),
        ("every => '1 minute', overlap => 'queue'", "PT405"),
        ("every => '1 minute', catch_up => '-1 second'", "PT406"),
    ],
)
async def test_invalid_schedules_get_their_sqlstate_and_write_nothing(conn, args, sqlstate):
    sql = CREATE.format(args).replace(
        "task_type => 'job', task_type => 'job'", "task_type => 'job'"
    )
    await raises(conn, sql, sqlstate, "bad")
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.schedules") == 0


async def test_blank_name_and_unknown_schedule(conn):
    await raises(conn, CREATE.format("every => '1 minute'"), "PT408", " ")
    for fn in ("drop_schedule", "pause_schedule", "resume_schedule", "trigger_schedule"):
        await raises(conn, f"SELECT pgtasks.{fn}(name => 'nope')", "PT407")


@pytest.mark.parametrize(
    ("cron", "normalized"),
    [
        ("0 6 * * *", "0 6 * * *"),
        ("*/15  9-17 * * MON-FRI", "*/15 9-17 * * mon-fri"),
        ("0 0 29 2 *", "0 0 29 2 *"),
        ("30 2 L-1 * *".replace("L-1", "28-31"), "30 2 28-31 * *"),
        ("0,30 * 1,15 jan,jul 0,7", "0,30 * 1,15 jan,jul 0,7"),
        ("@daily", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
        ("5/15 0 1-31/2 jan-dec/3 5-7", "5/15 0 1-31/2 jan-dec/3 5-7"),
    ],
)
async def test_valid_cron_is_stored_normalized(conn, cron, normalized):
    await conn.execute(
        "SELECT pgtasks.create_schedule(name => 'c', task_type => 'job', cron => $1)", cron
    )
    row = await conn.fetchrow("SELECT cron, next_run_at FROM pgtasks.schedules")
    assert row["cron"] == normalized
    assert croniter.is_valid(normalized)  # what SQL accepts, the worker's parser reads
    assert row["next_run_at"] is None  # a worker computes it with croniter


async def test_create_is_an_upsert_and_code_never_overwrites_sql(conn):
    await conn.execute(
        "SELECT pgtasks.create_schedule(name => 's', task_type => 'job', every => '1 minute')"
    )
    first = await conn.fetchval("SELECT next_run_at FROM pgtasks.schedules")
    assert first > datetime.now(UTC) - timedelta(seconds=5)
    assert first.timestamp() % 60 == 0  # every-ticks are multiples of `every` since the epoch
    await conn.execute(
        "SELECT pgtasks.create_schedule(name => 's', task_type => 'job', every => '1 minute',"
        " params => '{\"a\": 1}')"
    )
    row = await conn.fetchrow("SELECT * FROM pgtasks.schedules")
    assert (
        row["params"] in ({"a": 1}, '{"a": 1}') and row["next_run_at"] == first
    )  # timing unchanged
    kept = await conn.fetchval(
        "SELECT pgtasks.declare_schedule(name => 's', task_type => 'other', every => '5 minutes')"
    )
    assert kept is False
    assert await conn.fetchval("SELECT task_type FROM pgtasks.schedules") == "job"
    # A schedule a worker declared is updated by the next declaration.
    assert await conn.fetchval(
        "SELECT pgtasks.declare_schedule(name => 'd', task_type => 'job', every => '5 minutes')"
    )
    assert await conn.fetchval(
        "SELECT pgtasks.declare_schedule(name => 'd', task_type => 'job2', every => '5 minutes')"
    )
    assert await conn.fetchval("SELECT task_type FROM pgtasks.schedules WHERE name = 'd'") == "job2"


async def backdate(conn: asyncpg.Connection, name: str, seconds: int) -> None:
    """As if no worker had run for `seconds`: next_run_at that long before the current tick."""
    await conn.execute(
        "UPDATE pgtasks.schedule_defs"
        " SET next_run_at = date_bin(every, now(), 'epoch') - $2::interval WHERE name = $1",
        name,
        timedelta(seconds=seconds),
    )


async def fire(conn: asyncpg.Connection, name: str) -> list[int]:
    rev = await conn.fetchval("SELECT revision FROM pgtasks.schedule_defs WHERE name = $1", name)
    return [
        r[0]
        for r in await conn.fetch(
            "SELECT * FROM pgtasks.fire_schedule(name => $1, revision => $2)", name, rev
        )
    ]


async def test_catch_up_runs_the_window_once_each_and_counts_the_rest(conn):
    await conn.execute(
        "SELECT pgtasks.create_schedule(name => 'e', task_type => 'job', every => '1 second',"
        " catch_up => '5 seconds')"
    )
    async with conn.transaction():  # now() stands still
        await backdate(conn, "e", 10)  # ticks now-10 .. now: 11 due
        now = await conn.fetchval("SELECT now()")
        on_tick = now.microsecond == 0  # then now-5 s is a tick, inside the window
        ids = await fire(conn, "e")
        rows = await conn.fetch(
            "SELECT schedule_tick, now() - schedule_tick AS age FROM pgtasks.tasks ORDER BY id"
        )
        ages = [r["age"].total_seconds() for r in rows]
        assert len(ids) == 5 + on_tick and ages == sorted(ages, reverse=True)  # oldest first
        assert all(a <= 5 for a in ages)
        s = await conn.fetchrow("SELECT * FROM pgtasks.schedules")
        assert s["skipped"] == 6 - on_tick
        assert s["last_task_id"] == ids[-1] and s["last_status"] == "PENDING"
        assert s["next_run_at"] > await conn.fetchval("SELECT now()")
        assert await fire(conn, "e") == []  # nothing due any more


async def test_catch_up_zero_runs_only_the_latest_missed_ticks(conn):
    await conn.execute(
        "SELECT pgtasks.create_schedule(name => 'e', task_type => 'job', every => '1 second')"
    )
    async with conn.transaction():
        await backdate(conn, "e", 10)
        now = await conn.fetchval("SELECT now()")
        on_tick = now.microsecond == 0
        # The latest, and the one before it: 2 s late is late, not missed.
        assert len(await fire(conn, "e")) == 2 + on_tick
        assert await conn.fetchval("SELECT skipped FROM pgtasks.schedules") == 9 - on_tick


async def test_stale_revision_fires_nothing_and_a_tick_is_never_inserted_twice(conn):
    await conn.execute(
        "SELECT pgtasks.create_schedule(name => 'e', task_type => 'job', every => '1 second',"
        " catch_up => '1 minute')"
    )
    async with conn.transaction():
        await backdate(conn, "e", 3)
        rev = await conn.fetchval("SELECT revision FROM pgtasks.schedule_defs")
        assert len(await fire(conn, "e")) == 4
        again = await conn.fetch(
            "SELECT * FROM pgtasks.fire_schedule(name => 'e', revision => $1)", rev
        )
        assert again == []
        # Even with the revision forced back, the UNIQUE (schedule, tick) index holds.
        await backdate(conn, "e", 3)
        assert await fire(conn, "e") == []
        assert await conn.fetchval("SELECT count(*) FROM pgtasks.tasks") == 4
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute(
            "INSERT INTO pgtasks.tasks (task_type, schedule, schedule_tick)"
            " SELECT 'job', schedule, schedule_tick FROM pgtasks.tasks LIMIT 1"
        )


async def test_overlap_skip_and_cancel_previous(conn):
    for name, overlap in (("s", "skip"), ("c", "cancel_previous")):
        await conn.execute(
            "SELECT pgtasks.create_schedule(name => $1, task_type => 'job', every => '1 second',"
            " overlap => $2, catch_up => '1 minute')",
            name,
            overlap,
        )
    async with conn.transaction():
        await backdate(conn, "s", 3)
        await backdate(conn, "c", 3)
        assert len(await fire(conn, "s")) == 1  # the first is still PENDING: 3 skipped
        assert (
            await conn.fetchval("SELECT skipped_overlap FROM pgtasks.schedules WHERE name='s'") == 3
        )
        ids = await fire(conn, "c")
        assert len(ids) == 4
        statuses = await conn.fetch(
            "SELECT status FROM pgtasks.tasks WHERE schedule = 'c' ORDER BY schedule_tick"
        )
        assert [r[0] for r in statuses] == ["CANCELLED"] * 3 + ["PENDING"]


async def test_cron_fire_checks_the_ticks_it_is_given(conn):
    await conn.execute(
        "SELECT pgtasks.create_schedule(name => 'c', task_type => 'job', cron => '* * * * *')"
    )
    now = await conn.fetchval("SELECT now()")
    minute = now.replace(second=0, microsecond=0)
    rev = await conn.fetchval("SELECT revision FROM pgtasks.schedule_defs")
    fire_sql = (
        "SELECT * FROM pgtasks.fire_schedule(name => 'c', revision => $1, ticks => $2,"
        " next_run_at => $3)"
    )
    await raises(conn, fire_sql, "PT409", rev, [minute], minute + timedelta(minutes=1))
    await raises(conn, fire_sql, "PT409", rev, [], datetime(9999, 1, 1, tzinfo=UTC))
    assert await conn.fetch(fire_sql, rev, [], minute + timedelta(minutes=1)) == []
    async with conn.transaction():
        await conn.execute(
            "UPDATE pgtasks.schedule_defs SET next_run_at = $1", minute - timedelta(minutes=2)
        )
        rev = await conn.fetchval("SELECT revision FROM pgtasks.schedule_defs")
        await raises(
            conn,
            fire_sql,
            "PT409",
            rev,
            [minute - timedelta(minutes=3)],
            minute + timedelta(minutes=1),
        )
    async with conn.transaction():
        await conn.execute(
            "UPDATE pgtasks.schedule_defs SET next_run_at = $1", minute - timedelta(minutes=2)
        )
        rev = await conn.fetchval("SELECT revision FROM pgtasks.schedule_defs")
        ticks = [minute - timedelta(minutes=2), minute - timedelta(minutes=1), minute]
        await raises(conn, fire_sql, "PT409", rev, ticks, minute)  # next not after the ticks
    async with conn.transaction():
        await conn.execute(
            "UPDATE pgtasks.schedule_defs SET next_run_at = $1", minute - timedelta(minutes=2)
        )
        rev = await conn.fetchval("SELECT revision FROM pgtasks.schedule_defs")
        assert len(await conn.fetch(fire_sql, rev, ticks, minute + timedelta(minutes=1))) == 1
        assert await conn.fetchval("SELECT skipped FROM pgtasks.schedules") == 2


async def test_pause_resume_trigger(conn):
    await conn.execute(
        "SELECT pgtasks.create_schedule(name => 'p', task_type => 'job', every => '1 second')"
    )
    await conn.execute("SELECT pgtasks.pause_schedule(name => 'p')")
    async with conn.transaction():
        await backdate(conn, "p", 5)
        assert await conn.fetch("SELECT * FROM pgtasks.due_schedules()") == []
        assert await fire(conn, "p") == []
    tid = await conn.fetchval("SELECT pgtasks.trigger_schedule(name => 'p')")
    row = await conn.fetchrow("SELECT * FROM pgtasks.schedules")
    assert row["paused"] and row["last_task_id"] == tid and row["last_status"] == "PENDING"
    await conn.execute("SELECT pgtasks.resume_schedule(name => 'p')")
    row = await conn.fetchrow("SELECT * FROM pgtasks.schedules")
    assert not row["paused"] and row["next_run_at"] > await conn.fetchval("SELECT now()")
    await conn.execute("SELECT pgtasks.drop_schedule(name => 'p')")
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.schedules") == 0
    assert await conn.fetchval("SELECT schedule FROM pgtasks.tasks WHERE id = $1", tid) == "p"


async def test_due_schedules_hands_each_schedule_to_one_caller(conn, dsn):
    await conn.execute(
        "SELECT pgtasks.create_schedule(name => 'e', task_type => 'job', every => '1 hour')"
    )
    # The clock at the first tick: exactly one is due, the next an hour later.
    await conn.execute(
        "SELECT pgtasks.advance_clock(greatest(next_run_at - pgtasks.now(), '1 us'))"
        " FROM pgtasks.schedules"
    )
    other = await asyncpg.connect(dsn)
    try:
        first = await conn.fetch("SELECT * FROM pgtasks.due_schedules()")
        second = await other.fetch("SELECT * FROM pgtasks.due_schedules()")
        assert [r["name"] for r in first] == ["e"] and second == []
        assert await conn.fetchval("SELECT pgtasks.fire_every_schedules()") == 0  # claimed
        await conn.execute("UPDATE pgtasks.schedule_defs SET claimed_until = NULL")
        assert await other.fetchval("SELECT pgtasks.fire_every_schedules()") == 1
    finally:
        await other.close()


async def test_two_sessions_fire_the_same_revision_one_enqueues(conn, dsn):
    """The interleaving the claim normally prevents (a claim expired mid-fire): the second
    caller waits for the row lock, then finds the revision moved and writes nothing."""
    await conn.execute(
        "SELECT pgtasks.create_schedule(name => 'e', task_type => 'job', every => '1 second',"
        " catch_up => '1 minute')"
    )
    await conn.execute(
        "UPDATE pgtasks.schedule_defs"
        " SET next_run_at = date_bin('1 second', now(), 'epoch') - interval '2 seconds'"
    )
    rev = await conn.fetchval("SELECT revision FROM pgtasks.schedule_defs")
    fire_sql = "SELECT * FROM pgtasks.fire_schedule(name => 'e', revision => $1)"
    other = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            first = await conn.fetch(fire_sql, rev)
            second = asyncio.ensure_future(other.fetch(fire_sql, rev))
            # The second caller waits for the row lock this transaction holds.
            await wait_blocked(conn, other.get_server_pid(), by=conn.get_server_pid())
            assert not second.done()
        assert len(first) >= 3 and await second == []
    finally:
        await other.close()
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.tasks") == len(first)


async def clock_to(conn: asyncpg.Connection, name: str, late: timedelta) -> None:
    """Move the test clock to `late` after the schedule's next tick."""
    await conn.execute(
        "SELECT pgtasks.advance_clock(next_run_at + $2::interval - pgtasks.now())"
        " FROM pgtasks.schedule_defs WHERE name = $1",
        name,
        late,
    )


async def test_misfire_grace_skips_and_counts_a_tick_found_too_late(conn):
    """The timeline of docs/schedules.md: every 10 minutes, catch_up 1 hour, grace 5 minutes."""
    await conn.execute(
        "SELECT pgtasks.create_schedule(name => 'g', task_type => 'job', every => '10 minutes',"
        " catch_up => '1 hour', misfire_grace => '5 minutes')"
    )
    first = await conn.fetchval("SELECT next_run_at FROM pgtasks.schedules")
    await clock_to(conn, "g", timedelta(minutes=1))  # 1 minute late: runs
    assert len(await fire(conn, "g")) == 1
    await clock_to(conn, "g", timedelta(minutes=7))  # 7 minutes late: skipped and counted
    assert await fire(conn, "g") == []
    s = await conn.fetchrow("SELECT * FROM pgtasks.schedules")
    assert (s["skipped_misfire"], s["skipped"]) == (1, 0)
    assert s["misfire_grace"] == timedelta(minutes=5)
    assert s["next_run_at"] == first + timedelta(minutes=20)
    await clock_to(conn, "g", timedelta(seconds=30))  # the next one runs
    assert len(await fire(conn, "g")) == 1
    # An outage of 25 minutes: catch_up wants the three missed ticks, the grace keeps
    # only the one found 5 minutes late or less.
    await clock_to(conn, "g", timedelta(minutes=23))
    assert len(await fire(conn, "g")) == 1
    s = await conn.fetchrow("SELECT * FROM pgtasks.schedules")
    assert (s["skipped_misfire"], s["skipped"]) == (3, 0)
    ticks = [r[0] for r in await conn.fetch("SELECT schedule_tick FROM pgtasks.tasks ORDER BY 1")]
    assert [(t - first) // timedelta(minutes=10) for t in ticks] == [0, 2, 5]


async def test_misfire_grace_applies_to_the_ticks_a_cron_caller_passes(conn):
    await conn.execute(
        "SELECT pgtasks.create_schedule(name => 'c', task_type => 'job', cron => '* * * * *',"
        " misfire_grace => '10 seconds')"
    )
    fire_sql = (
        "SELECT * FROM pgtasks.fire_schedule(name => 'c', revision => $1, ticks => $2,"
        " next_run_at => $3)"
    )
    for late, runs in ((timedelta(seconds=30), False), (timedelta(seconds=4), True)):
        async with conn.transaction():  # now() stands still
            now = await conn.fetchval("SELECT pgtasks.now()")
            minute = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
            await conn.execute("SELECT pgtasks.advance_clock($1)", minute + late - now)
            await conn.execute(
                "UPDATE pgtasks.schedule_defs SET next_run_at = $1", minute - timedelta(minutes=1)
            )
            rev = await conn.fetchval("SELECT revision FROM pgtasks.schedule_defs")
            before = await conn.fetchrow("SELECT * FROM pgtasks.schedules")
            ids = await conn.fetch(
                fire_sql,
                rev,
                [minute - timedelta(minutes=1), minute],
                minute + timedelta(minutes=1),
            )
            s = await conn.fetchrow("SELECT * FROM pgtasks.schedules")
        # catch_up 0 keeps the latest (the one before is counted in skipped); the grace
        # then decides about the latest.
        assert len(ids) == runs
        assert s["skipped"] - before["skipped"] == 1
        assert s["skipped_misfire"] - before["skipped_misfire"] == (not runs)


@pytest.mark.parametrize("grace", ["1 second", "-1 minute", "0", "2 years"])
async def test_misfire_grace_out_of_range_is_refused(conn, grace):
    await raises(
        conn,
        CREATE.format("every => '1 minute', misfire_grace => $2::text::interval"),
        "PT410",
        "m",
        grace,
    )
    await raises(
        conn,
        "SELECT pgtasks.declare_schedule(name => $1, task_type => 'job', every => '1 minute',"
        " misfire_grace => $2::text::interval)",
        "PT410",
        "m",
        grace,
    )
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.schedules") == 0
