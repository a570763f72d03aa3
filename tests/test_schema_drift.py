"""Schema drift: the migrations build exactly the committed sql/schema.sql, and a database
deployed at an older version upgrades to the same schema with its tasks still working."""

from __future__ import annotations

import difflib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from pgtasks import db
from pgtasks.migrations import migrate_url
from tests.schema_dump import REGENERATE, SCHEMA_FILE, committed, dump_schema


def explain_drift(expected: str, got: str, what: str) -> str:
    diff = "".join(
        difflib.unified_diff(
            expected.splitlines(keepends=True), got.splitlines(keepends=True),
            "sql/schema.sql", what, n=2,
        )
    )  # fmt: skip
    lines = diff.splitlines()
    shown = "\n".join(lines[:80]) + (
        f"\n... {len(lines) - 80} more lines" if len(lines) > 80 else ""
    )
    return (
        f"{what} differs from {SCHEMA_FILE.name}. If the change is intended, regenerate the "
        f"file with `{REGENERATE}` and commit it.\n{shown}"
    )


@pytest.fixture
async def new_database(server) -> AsyncIterator[str]:
    """URL of an empty database of its own (no migrations applied)."""
    admin = await asyncpg.connect(server.url())
    name = f"drift_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        yield server.url(name)
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


async def test_migrations_build_the_committed_schema(new_database):
    await migrate_url(new_database)
    got = dump_schema(new_database)
    assert got == committed(), explain_drift(committed(), got, "a database built by migrating")


async def test_a_database_at_0002_with_tasks_upgrades_to_the_same_schema(new_database):
    """Existing deployments: 0003+ apply on top of 0002 and keep every task usable."""
    await migrate_url(new_database, up_to=2)
    conn = await db.connect(new_database)
    try:
        # A deployment's worth of states, through the 0002 API.
        for i in range(6):
            await conn.execute("SELECT pgtasks.submit_task('t', $1::jsonb, 'q', 0)", {"i": i})
        # Values 0002 accepted and no claim could use (issue 9, defects 3 and 4).
        absurd = [
            await conn.fetchval(f"SELECT pgtasks.submit_task('t', '{{}}', 'q', 0, {args})")
            for args in ("'infinity', 3, interval '1 hour'", "now(), 3, interval '300000 years'",
                         "'-infinity', 3, interval '1 hour'")
        ]  # fmt: skip
        await conn.execute("UPDATE pgtasks.tasks SET priority = -1 WHERE id = ANY ($1)", absurd)
        running = await conn.fetch("SELECT id, attempt FROM pgtasks.claim_tasks('w', NULL, 4)")
        (done, failed, waiting, still_running) = [(r["id"], r["attempt"]) for r in running]
        await conn.execute("SELECT pgtasks.finish_task($1, $2, '1')", *done)
        await conn.execute("SELECT pgtasks.fail_task($1, $2, 'x', retryable => false)", *failed)
        await conn.execute(
            "SELECT pgtasks.fail_task($1, $2, 'x', retry_delay => interval '0')", *waiting
        )

        assert (await migrate_url(new_database))[0].version == 3
        got = dump_schema(new_database)
        assert got == committed(), explain_drift(committed(), got, "a database upgraded from 0002")

        # Old rows got the new column's value; every one of them still moves on.
        assert await conn.fetchval("SELECT count(*) FROM pgtasks.tasks") == 9
        _, huge, past = absurd
        clamped = await conn.fetch(
            "SELECT id, run_at > now() + interval '99 years' AS far, timeout::text,"
            " run_at <= now() AS ready FROM pgtasks.tasks WHERE id = ANY ($1) ORDER BY id",
            absurd,
        )
        assert [(r["far"], r["timeout"], r["ready"]) for r in clamped] == [
            (True, "01:00:00", False),
            (False, "1 year", True),
            (False, "01:00:00", True),
        ]
        assert await conn.fetchval(
            "SELECT bool_and(backoff_base = interval '1 second') FROM pgtasks.tasks"
        )
        lost = await conn.fetch(
            "SELECT * FROM pgtasks.heartbeat('w', $1, $2)",
            [still_running[0]], [still_running[1]],
        )  # fmt: skip
        assert lost == []
        await conn.execute("SELECT pgtasks.fail_task($1, $2, 'again')", *still_running)
        claimed = await conn.fetch("SELECT * FROM pgtasks.claim_tasks('w', max_tasks => 10)")
        # two never claimed, the one waiting (retry_delay 0), then the two clamped ready ones
        assert [r["id"] for r in claimed][3:] == [huge, past]
        rejected = await conn.fetch(
            "SELECT * FROM pgtasks.finish_tasks($1, $2, $3::jsonb[])",
            [r["id"] for r in claimed], [r["attempt"] for r in claimed], [None] * 5,
        )  # fmt: skip
        assert rejected == []
        counts = dict(
            await conn.fetch("SELECT status::text, count(*) FROM pgtasks.tasks GROUP BY 1")
        )
        assert counts == {"DONE": 6, "FAILED": 1, "COMMIT": 1, "PENDING": 1}
    finally:
        await conn.close()
