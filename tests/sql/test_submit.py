"""submit_task / submit_tasks: named arguments, defaults, and bad input that inserts nothing."""

from __future__ import annotations

import asyncpg
import pytest


async def count(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("SELECT count(*) FROM pgtasks.tasks")


async def test_positional_and_named_arguments(conn):
    a = await conn.fetchval(
        """SELECT pgtasks.submit_task('resize', '{"w": 10}', queue => 'images')"""
    )
    b = await conn.fetchval("SELECT pgtasks.submit_task('x', '{}', 'q2', 5)")
    rows = {r["id"]: r for r in await conn.fetch("SELECT * FROM pgtasks.tasks")}
    assert rows[a]["queue"] == "images" and rows[a]["params"] == {"w": 10}
    assert rows[a]["priority"] == 0 and rows[a]["max_retries"] == 3
    assert rows[a]["status"] == "PENDING" and rows[a]["attempt"] == 0
    assert rows[b]["queue"] == "q2" and rows[b]["priority"] == 5


async def test_defaults(conn):
    tid = await conn.fetchval("SELECT pgtasks.submit_task('x')")
    row = await conn.fetchrow(
        "SELECT *, run_at <= now() AS ready FROM pgtasks.tasks WHERE id=$1", tid
    )
    assert row["params"] == {} and row["queue"] == "default" and row["ready"]


@pytest.mark.parametrize(
    ("call", "sqlstate"),
    [
        ("pgtasks.submit_task(NULL)", "PT101"),
        ("pgtasks.submit_task('')", "PT101"),
        ("pgtasks.submit_task('   ')", "PT101"),
        ("pgtasks.submit_task('x', '[1, 2]')", "PT102"),
        ("pgtasks.submit_task('x', '\"text\"')", "PT102"),
        ("pgtasks.submit_task('x', NULL)", "PT102"),
        ("pgtasks.submit_task('x', queue => '')", "PT103"),
        # NULL or omitted means "the type's policy, else settings" since 0003; blank
        # means blank in any script (tab, ideographic space, no-break space, zero width).
        ("pgtasks.submit_task(E'\\t')", "PT101"),
        ("pgtasks.submit_task(U&'\\3000')", "PT101"),
        ("pgtasks.submit_task(repeat('t', 256))", "PT101"),
        ("pgtasks.submit_task('x', queue => E' \\n\\t')", "PT103"),
        ("pgtasks.submit_task('x', queue => U&'\\00a0\\200b\\3000')", "PT103"),
        ("pgtasks.submit_task('x', queue => repeat('q', 256))", "PT103"),
        ("pgtasks.submit_task('x', run_at => 'infinity')", "PT105"),
        ("pgtasks.submit_task('x', run_at => '-infinity')", "PT105"),
        ("pgtasks.submit_task('x', run_at => now() + interval '101 years')", "PT105"),
        ("pgtasks.submit_task('x', run_at => now() - interval '101 years')", "PT105"),
        ("pgtasks.submit_task('x', max_retries => -1)", "PT106"),
        ("pgtasks.submit_task('x', max_retries => 1001)", "PT106"),
        ("pgtasks.submit_task('x', timeout => interval '0')", "PT107"),
        ("pgtasks.submit_task('x', timeout => interval '-1 minute')", "PT107"),
        ("pgtasks.submit_task('x', timeout => interval '300000 years')", "PT107"),
        ("pgtasks.submit_task('x', timeout => 'infinity')", "PT107"),
        ("pgtasks.submit_task('x', backoff_base => interval '0')", "PT112"),
        ("pgtasks.submit_task('x', backoff_base => interval '2 days')", "PT112"),
        ("pgtasks.submit_task('x', backoff_base => 'infinity')", "PT112"),
        ("pgtasks.submit_tasks('x', ARRAY['{}']::jsonb[], run_at => 'infinity')", "PT105"),
        ("pgtasks.submit_tasks('x', ARRAY['{}']::jsonb[], timeout => 'infinity')", "PT107"),
        ("pgtasks.submit_tasks(E'\\t', ARRAY['{}']::jsonb[])", "PT101"),
        ("pgtasks.submit_tasks('x', NULL)", "PT108"),
        ("pgtasks.submit_tasks('x', ARRAY['{}', '3']::jsonb[])", "PT102"),
        ("pgtasks.submit_tasks('', ARRAY['{}']::jsonb[])", "PT101"),
    ],
)
async def test_bad_input_has_its_sqlstate_and_inserts_nothing(conn, call, sqlstate):
    with pytest.raises(asyncpg.PostgresError) as info:
        await conn.fetch(f"SELECT {call}")
    assert info.value.sqlstate == sqlstate
    assert info.value.message.startswith("pgtasks: ")
    assert info.value.hint, "every pgtasks error says what to do"
    assert await count(conn) == 0
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.task_events") == 0


async def test_submit_tasks_batch_keeps_order(conn):
    ids = [
        r[0]
        for r in await conn.fetch(
            "SELECT * FROM pgtasks.submit_tasks('x', $1::jsonb[], queue => 'b')",
            [{"i": i} for i in range(50)],
        )
    ]
    assert len(ids) == 50 and ids == sorted(ids)
    params = await conn.fetch("SELECT params FROM pgtasks.tasks ORDER BY id")
    assert [p[0]["i"] for p in params] == list(range(50))


async def test_empty_batch_inserts_nothing(conn):
    rows = await conn.fetch("SELECT * FROM pgtasks.submit_tasks('x', ARRAY[]::jsonb[])")
    assert rows == [] and await count(conn) == 0
