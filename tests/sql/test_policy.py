"""Policies in the database (sql/0003): settings, task types, the row's backoff base.

A plain-SQL submit gets what a Python one gets: explicit argument > the type's registered
policy > settings default. fail_task and rescue retry after the same, bounded backoff.
"""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest

from tests.sql.helpers import expire_lease, raises


async def task_row(conn: asyncpg.Connection, tid: int) -> asyncpg.Record:
    return await conn.fetchrow(
        "SELECT queue, priority, max_retries, timeout, backoff_base FROM pgtasks.tasks WHERE id=$1",
        tid,
    )


# -- settings ---------------------------------------------------------------------------


async def test_settings_hold_the_documented_defaults(conn):
    s = await conn.fetchrow("SELECT * FROM pgtasks.current_settings()")
    assert dict(s) == {
        "id": True,
        "default_queue": "default",
        "default_priority": 0,
        "default_max_retries": 3,
        "default_timeout": timedelta(hours=4),
        "default_backoff_base": timedelta(seconds=1),
        "max_backoff": timedelta(hours=1),
        "default_lease": timedelta(seconds=60),
        "retention": timedelta(days=7),
        "max_params_bytes": 1048576,
        "max_result_bytes": 1048576,
        "max_log_bytes": 65536,
        "schedule_min_every": timedelta(seconds=1),
        "schedule_max_ticks": 100,
        "max_snoozes": 100,
    }


async def test_configure_changes_only_what_it_is_given(conn):
    s = await conn.fetchrow(
        "SELECT * FROM pgtasks.configure(default_queue => 'main', retention => interval '1 day')"
    )
    assert s["default_queue"] == "main" and s["retention"] == timedelta(days=1)
    assert s["default_max_retries"] == 3 and s["default_lease"] == timedelta(seconds=60)
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.settings") == 1


@pytest.mark.parametrize(
    ("args", "sqlstate"),
    [
        ("default_queue => E'\\t'", "PT103"),
        ("default_max_retries => -1", "PT106"),
        ("default_timeout => interval '0'", "PT107"),
        ("default_timeout => 'infinity'", "PT107"),
        ("default_backoff_base => interval '-1 second'", "PT112"),
        ("default_lease => interval '0'", "PT114"),
        ("max_backoff => interval '0'", "PT118"),
        ("retention => 'infinity'", "PT118"),
        ("max_params_bytes => 0", "PT118"),
        ("max_log_bytes => -5", "PT118"),
    ],
)
async def test_configure_rejects_bad_values(conn, args, sqlstate):
    before = await conn.fetchrow("SELECT * FROM pgtasks.settings")
    await raises(conn, f"SELECT pgtasks.configure({args})", sqlstate)
    assert await conn.fetchrow("SELECT * FROM pgtasks.settings") == before


async def test_the_settings_row_cannot_go_away(conn):
    await raises(conn, "DELETE FROM pgtasks.settings", "PT118")
    await raises(conn, "TRUNCATE pgtasks.settings", "PT118")
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute("INSERT INTO pgtasks.settings DEFAULT VALUES")


async def test_unregistered_types_get_the_settings_defaults(conn):
    await conn.execute(
        "SELECT pgtasks.configure(default_queue => 'main', default_max_retries => 7,"
        " default_timeout => interval '5 minutes', default_backoff_base => interval '2 seconds',"
        " default_priority => 3)"
    )
    tid = await conn.fetchval("SELECT pgtasks.submit_task('never_registered')")
    assert tuple(await task_row(conn, tid)) == (
        "main", 3, 7, timedelta(minutes=5), timedelta(seconds=2),
    )  # fmt: skip
    # A hand-written INSERT gets the same defaults (the column defaults read settings).
    raw = await conn.fetchval("INSERT INTO pgtasks.tasks (task_type) VALUES ('raw') RETURNING id")
    assert tuple(await task_row(conn, raw)) == tuple(await task_row(conn, tid))


# -- task types -------------------------------------------------------------------------


async def test_a_registered_policy_applies_to_a_plain_sql_submit(conn):
    await conn.execute(
        "SELECT pgtasks.register_task_type('resize', queue => 'images', max_retries => 5,"
        " timeout => interval '10 minutes', backoff_base => interval '30 seconds',"
        " worker_id => 'w1')"
    )
    tid = await conn.fetchval("SELECT pgtasks.submit_task('resize')")
    assert tuple(await task_row(conn, tid)) == (
        "images", 0, 5, timedelta(minutes=10), timedelta(seconds=30),
    )  # fmt: skip
    ids = await conn.fetch(
        "SELECT * FROM pgtasks.submit_tasks('resize', ARRAY['{}', '{}']::jsonb[])"
    )
    for (i,) in ids:
        assert (await task_row(conn, i))["queue"] == "images"
    # ...so a worker of that queue claims it.
    rows = await conn.fetch("SELECT id FROM pgtasks.claim_tasks('w', ARRAY['images'], 10)")
    assert [r["id"] for r in rows] == [tid, *(i for (i,) in ids)]


async def test_explicit_arguments_win_over_the_policy(conn):
    await conn.execute(
        "SELECT pgtasks.register_task_type('resize', queue => 'images', priority => 4,"
        " max_retries => 5, timeout => interval '10 minutes', backoff_base => interval '30 s')"
    )
    tid = await conn.fetchval(
        "SELECT pgtasks.submit_task('resize', queue => 'urgent', priority => 9, max_retries => 0,"
        " timeout => interval '1 minute', backoff_base => interval '1 second')"
    )
    assert tuple(await task_row(conn, tid)) == (
        "urgent", 9, 0, timedelta(minutes=1), timedelta(seconds=1),
    )  # fmt: skip


async def test_a_policy_left_null_falls_back_to_settings(conn):
    await conn.execute("SELECT pgtasks.register_task_type('resize', max_retries => 5)")
    tid = await conn.fetchval("SELECT pgtasks.submit_task('resize')")
    assert tuple(await task_row(conn, tid)) == (
        "default", 0, 5, timedelta(hours=4), timedelta(seconds=1),
    )  # fmt: skip
    view = await conn.fetchrow("SELECT * FROM pgtasks.registered_types")
    assert view["task_type"] == "resize" and view["queue"] == "default"
    assert view["max_retries"] == 5 and view["timeout"] == timedelta(hours=4)


async def test_registering_again_replaces_the_policy_but_not_an_unchanged_one(conn):
    reg = "SELECT pgtasks.register_task_type('t', queue => $1, worker_id => $2)"
    await conn.execute(reg, "a", "w1")
    first = await conn.fetchrow("SELECT * FROM pgtasks.task_types")
    await conn.execute("SELECT pgtasks.advance_clock(interval '1 second')")  # updated_at may differ
    await conn.execute(reg, "a", "w2")
    assert await conn.fetchrow("SELECT * FROM pgtasks.task_types") == first
    await conn.execute(reg, None, "w3")
    row = await conn.fetchrow("SELECT * FROM pgtasks.task_types")
    assert row["queue"] is None and row["registered_by"] == "w3"
    assert row["updated_at"] > first["updated_at"]


@pytest.mark.parametrize(
    ("args", "sqlstate"),
    [
        ("NULL", "PT101"),
        ("U&'\\3000'", "PT101"),
        ("'t', queue => ''", "PT103"),
        ("'t', max_retries => 5000", "PT106"),
        ("'t', timeout => interval '2 years'", "PT107"),
        ("'t', backoff_base => interval '0'", "PT112"),
    ],
)
async def test_register_task_type_rejects_bad_policies(conn, args, sqlstate):
    await raises(conn, f"SELECT pgtasks.register_task_type({args})", sqlstate)
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.task_types") == 0


# -- limits -----------------------------------------------------------------------------


async def test_params_over_the_limit_are_refused_and_nothing_is_inserted(conn):
    await conn.execute("SELECT pgtasks.configure(max_params_bytes => 100)")
    big = {"x": "a" * 100}
    await raises(conn, "SELECT pgtasks.submit_task('t', $1::jsonb)", "PT113", big)
    await raises(conn, "SELECT pgtasks.submit_tasks('t', $1::jsonb[])", "PT113", [{}, big])
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.tasks") == 0
    assert await conn.fetchval("SELECT pgtasks.submit_task('t', $1::jsonb)", {"x": 1})


# -- backoff ----------------------------------------------------------------------------


async def test_backoff_cannot_overflow_and_stops_at_max_backoff(conn):
    for n in (44, 100, 10_000, 2_147_483_647):
        assert await conn.fetchval("SELECT pgtasks.backoff($1) = interval '1 hour'", n)
    await conn.execute("SELECT pgtasks.configure(max_backoff => interval '5 minutes')")
    assert await conn.fetchval(
        "SELECT pgtasks.backoff(10000, interval '1 day') = interval '5 minutes'"
    )
    first = await conn.fetchval("SELECT extract(epoch FROM pgtasks.backoff(NULL))")
    assert 0.8 <= first <= 1.2, "NULL retry count and base: the first retry at the default base"


async def test_fail_task_uses_the_rows_backoff_base(conn):
    tid = await conn.fetchval("SELECT pgtasks.submit_task('t', backoff_base => interval '60 s')")
    (row,) = await conn.fetch("SELECT * FROM pgtasks.claim_tasks('w')")
    fail = "SELECT pgtasks.fail_task($1, $2, 'boom')"
    assert await conn.fetchval(fail, tid, row["lease_token"]) == "COMMIT"
    assert await conn.fetchval(
        "SELECT run_at >= now() + interval '48 seconds' FROM pgtasks.tasks WHERE id = $1", tid
    )


async def test_rescue_uses_the_rows_backoff_base(conn):
    await conn.execute("SELECT pgtasks.register_task_type('slow', backoff_base => interval '60 s')")
    tid = await conn.fetchval("SELECT pgtasks.submit_task('slow')")
    await conn.fetch("SELECT * FROM pgtasks.claim_tasks('w')")
    await expire_lease(conn, tid)
    assert await conn.fetchval("SELECT pgtasks.rescue_expired()") == 1
    row = await conn.fetchrow(
        "SELECT status::text, run_at >= now() + interval '48 seconds' AS later"
        " FROM pgtasks.tasks WHERE id = $1",
        tid,
    )
    assert tuple(row) == ("COMMIT", True)


async def test_a_task_at_retry_ten_thousand_does_not_stop_rescue(conn):
    """Backoff at a very high retry count (2^44 s and beyond) stays capped instead of
    overflowing: one overflow would abort the rescue for every task."""
    await conn.execute("SELECT pgtasks.configure(default_max_retries => 1000)")
    old = await conn.fetchval("SELECT pgtasks.submit_task('t')")
    other = await conn.fetchval("SELECT pgtasks.submit_task('t')")
    await conn.fetch("SELECT * FROM pgtasks.claim_tasks('w', max_tasks => 2)")
    # retry_count 999 of 1000: the backoff exponent alone is far past any interval.
    await conn.execute("UPDATE pgtasks.tasks SET retry_count = 999 WHERE id = $1", old)
    await expire_lease(conn, old)
    await expire_lease(conn, other)
    assert await conn.fetchval("SELECT pgtasks.rescue_expired()") == 2
    statuses = await conn.fetch("SELECT status::text FROM pgtasks.tasks ORDER BY id")
    assert [r[0] for r in statuses] == ["COMMIT", "COMMIT"]


async def test_one_row_that_cannot_be_rescued_does_not_stop_the_others(conn):
    a, b, c = [
        await conn.fetchval("SELECT pgtasks.submit_task('t')") for _ in range(3)
    ]  # fmt: skip
    await conn.fetch("SELECT * FROM pgtasks.claim_tasks('w', max_tasks => 3)")
    for tid in (a, b, c):
        await expire_lease(conn, tid)
    # A hand-added trigger refuses to retry task a and refuses any change at all to b.
    await conn.execute(
        f"""
        CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.id = {a} AND NEW.status = 'COMMIT' OR NEW.id = {b} THEN
                RAISE EXCEPTION 'refused by a local rule';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse BEFORE UPDATE ON pgtasks.tasks
            FOR EACH ROW EXECUTE FUNCTION public.refuse();
        """
    )
    warnings: list[str] = []
    conn.add_log_listener(lambda _c, m: warnings.append(m.message))
    assert await conn.fetchval("SELECT pgtasks.rescue_expired()") == 2
    rows = dict(await conn.fetch("SELECT id, status::text FROM pgtasks.tasks"))
    assert rows == {a: "FAILED", b: "RUNNING", c: "COMMIT"}
    assert "refused by a local rule" in await conn.fetchval(
        "SELECT error FROM pgtasks.tasks WHERE id = $1", a
    )
    assert any(f"task {b} could not be rescued nor failed" in w for w in warnings), warnings


async def test_backoff_ignores_a_shadowing_power_in_public(conn):
    """The built-ins 0003 calls cannot be replaced through search_path."""
    await conn.execute(
        """
        CREATE FUNCTION public.power(double precision, double precision)
        RETURNS double precision LANGUAGE sql AS 'SELECT 1e300::float8';
        CREATE FUNCTION public.power(integer, integer)
        RETURNS double precision LANGUAGE sql AS 'SELECT 1e300::float8';
        SET search_path = public, pgtasks;
        """
    )
    tid = await conn.fetchval("SELECT pgtasks.submit_task('t')")
    (row,) = await conn.fetch("SELECT * FROM pgtasks.claim_tasks('w')")
    await conn.fetchval("SELECT pgtasks.fail_task($1, $2, 'boom')", tid, row["lease_token"])
    assert await conn.fetchval(
        "SELECT run_at < now() + interval '2 seconds' FROM pgtasks.tasks WHERE id = $1", tid
    )
