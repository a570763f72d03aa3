"""One catalog, two ways to it: a fresh install from the topic files in sql/schema/ and an
upgrade through the numbered deltas in sql/ end with exactly the same tables, columns,
constraints, indexes, triggers, functions (bodies, attributes, owners, grants), views and
comments, and an upgraded database keeps its tasks."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from pgtasks import db
from pgtasks.migrations import available, migrate_url
from tests.catalog import diff, snapshot


async def _empty_database(server) -> tuple[asyncpg.Connection, str]:
    admin = await asyncpg.connect(server.url())
    name = f"catalog_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE DATABASE {name}")
    return admin, name


@pytest.fixture
async def new_database(server) -> AsyncIterator[str]:
    """URL of an empty database of its own (nothing installed)."""
    admin, name = await _empty_database(server)
    try:
        yield server.url(name)
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


@pytest.fixture
async def fresh_catalog(server) -> dict[str, list[str]]:
    """The catalog of a database built from the topic files."""
    admin, name = await _empty_database(server)
    try:
        await migrate_url(server.url(name), fresh=True)
        conn = await asyncpg.connect(server.url(name))
        try:
            return await snapshot(conn)
        finally:
            await conn.close()
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


async def _catalog_of(url: str) -> dict[str, list[str]]:
    conn = await asyncpg.connect(url)
    try:
        return await snapshot(conn)
    finally:
        await conn.close()


@pytest.mark.parametrize("start", [None, 1, 10, 20])
async def test_every_upgrade_path_ends_with_the_fresh_catalog(new_database, fresh_catalog, start):
    """From nothing through every delta, and from versions a deployment may sit at."""
    if start is not None:
        await migrate_url(new_database, up_to=start)
    await migrate_url(new_database, fresh=False)
    got = await _catalog_of(new_database)
    difference = diff(fresh_catalog, got, "fresh", f"upgraded from {start or 'nothing'}")
    assert not difference, difference


async def test_a_fresh_install_records_every_delta_as_applied(new_database):
    await migrate_url(new_database)
    conn = await asyncpg.connect(new_database)
    try:
        rows = await conn.fetch("SELECT version, checksum FROM pgtasks.migrations ORDER BY 1")
        assert [(r[0], r[1]) for r in rows] == [(m.version, m.checksum) for m in available()]
        assert await migrate_url(new_database) == [], "nothing left to apply"
    finally:
        await conn.close()


async def test_the_comparison_sees_one_changed_line_in_a_body(new_database, fresh_catalog):
    """The test above could not fail if the snapshot dropped what it compares: a comment
    line added inside one function's body must show."""
    await migrate_url(new_database, fresh=True)
    conn = await asyncpg.connect(new_database)
    try:
        src = await conn.fetchval(
            "SELECT pg_get_functiondef('pgtasks.transition_reason(pgtasks.status, pgtasks.status)'"
            "::regprocedure)"
        )
        await conn.execute(
            src.replace("BEGIN", "BEGIN\n    -- one more line", 1)
            if "BEGIN" in src
            else src.replace("$function$", "$function$\n-- x", 1)
        )
        got = await snapshot(conn)
    finally:
        await conn.close()
    assert diff(fresh_catalog, got, "fresh", "changed") != ""
    (row,) = set(got["functions"]) - set(fresh_catalog["functions"])
    assert "transition_reason" in row and ("one more line" in row or "-- x" in row)


async def test_a_database_at_0002_with_tasks_in_every_state_upgrades_and_keeps_them(
    new_database, fresh_catalog
):
    """The first schema with a submit API, holding a task in every state it knew, takes every
    delta since, ends with the fresh catalog, and each of its tasks still moves on."""
    await migrate_url(new_database, up_to=2)
    conn = await db.connect(new_database)
    try:
        # A deployment's worth of states, through the 0002 API.
        for i in range(6):
            await conn.execute("SELECT pgtasks.submit_task('t', $1::jsonb, 'q', 0)", {"i": i})
        # Values 0002 accepted and no claim could use: an infinite or far-off run_at, an
        # absurd timeout.
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
        cancelled = await conn.fetchval("SELECT pgtasks.submit_task('t', '{}', 'q', 0)")
        await conn.execute("SELECT pgtasks.cancel_task($1)", cancelled)
        before = dict(
            await conn.fetch("SELECT status::text, count(*) FROM pgtasks.tasks GROUP BY 1")
        )
        assert set(before) == {"PENDING", "RUNNING", "COMMIT", "DONE", "FAILED", "CANCELLED"}

        assert (await migrate_url(new_database))[0].version == 3
        difference = diff(fresh_catalog, await snapshot(conn), "fresh", "upgraded from 0002")
        assert not difference, difference
        after = dict(
            await conn.fetch("SELECT status::text, count(*) FROM pgtasks.tasks GROUP BY 1")
        )
        assert after == before, "the upgrade kept every task in its state"

        # Old rows got the new column's value; every one of them still moves on.
        assert await conn.fetchval("SELECT count(*) FROM pgtasks.tasks") == 10
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
        # The task running across the upgrade was claimed before lease tokens: its holder
        # has none to present, so the task is lost to it and rescued once its lease runs
        # out, like the task of a worker that died.
        lost = await conn.fetch(
            "SELECT * FROM pgtasks.heartbeat('w', $1, $2)", [still_running[0]], ["0" * 64]
        )
        assert [r[0] for r in lost] == [still_running[0]]
        await conn.fetchval("SELECT pgtasks.advance_clock(interval '1 day')")
        assert await conn.fetchval("SELECT pgtasks.rescue_expired()") == 1
        claimed = await conn.fetch("SELECT * FROM pgtasks.claim_tasks('w', max_tasks => 10)")
        # two never claimed, the one waiting (retry_delay 0), then the two clamped ready ones
        assert [r["id"] for r in claimed][3:] == [huge, past]
        rejected = await conn.fetch(
            "SELECT * FROM pgtasks.finish_tasks($1, $2, $3::jsonb[])",
            [r["id"] for r in claimed], [r["lease_token"] for r in claimed], [None] * 5,
        )  # fmt: skip
        assert rejected == []
        counts = dict(
            await conn.fetch("SELECT status::text, count(*) FROM pgtasks.tasks GROUP BY 1")
        )
        assert counts == {"DONE": 6, "FAILED": 1, "COMMIT": 1, "PENDING": 1, "CANCELLED": 1}
    finally:
        await conn.close()
