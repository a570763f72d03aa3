"""Migrations under load: each delta waits at most its lock timeout and is retried, the
error names the blocking session, and no-transaction deltas fail midway and finish on a rerun.

Each test runs sql/ as shipped plus probe deltas (tests/migration_probes.py) against its own
migrated database.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path

import asyncpg
import pytest

from pgtasks.errors import ConfigurationError
from pgtasks.migrations import (
    LockPolicy,
    Migration,
    MigrationBlocked,
    available,
    migrate_url,
    statements,
)
from tests.conftest import ROOT, wait_for
from tests.migration_probes import pgtasks_command, probe_sql_dir


def with_deltas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *texts: str) -> list[str]:
    """sql/ as shipped plus `texts` as the next numbered deltas; returns their file names."""
    import pgtasks.migrations as m

    folder, names = probe_sql_dir(tmp_path, *texts)
    monkeypatch.setattr(m, "sql_dir", lambda: folder)
    return names


async def ledger(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT version, name FROM pgtasks.migrations")
    return {f"{r['version']:04d}_{r['name']}.sql" for r in rows}


FAST = LockPolicy(timeout=0.2, attempts=3, backoff=0.05)


async def test_a_delta_behind_a_long_transaction_lets_the_queue_through_and_gives_up(
    dsn, conn, tmp_path, monkeypatch
):
    """The ALTER waits behind a reader's transaction; a claim that arrives after it waits
    for the ALTER's lock timeout, not for the reader, and after the last attempt the error
    names the reader's session."""
    (name,) = with_deltas(tmp_path, monkeypatch, "ALTER TABLE pgtasks.tasks ADD COLUMN probe text;")
    reader = await asyncpg.connect(dsn, server_settings={"application_name": "nightly-report"})
    claimer = await asyncpg.connect(dsn)
    heard: list[str] = []
    try:
        await reader.execute("BEGIN; SELECT count(*) FROM pgtasks.tasks")
        migrating = asyncio.create_task(migrate_url(dsn, locks=FAST, report=heard.append))
        # The ALTER is queued behind the reader ...
        await wait_for(
            conn,
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE 'ALTER TABLE pgtasks.tasks%')",
        )
        # ... and a claim arriving now waits for the ALTER, then goes through while the
        # reader still holds its lock.
        claim = claimer.execute("UPDATE pgtasks.tasks SET priority = priority WHERE false")
        await asyncio.wait_for(claim, 60)  # only a hang guard
        assert await reader.fetchval(
            "SELECT granted FROM pg_locks WHERE pid = pg_backend_pid()"
            " AND relation = 'pgtasks.tasks'::regclass"
        ), "the reader still holds its lock"
        with pytest.raises(MigrationBlocked) as blocked:
            await migrating
        reader_pid = await reader.fetchval("SELECT pg_backend_pid()")
        assert blocked.value.blocker_pid == reader_pid
        assert f"pid {reader_pid}" in str(blocked.value)
        assert "application 'nightly-report'" in str(blocked.value)
        assert "nothing of it was applied" in str(blocked.value)
        assert len(heard) == FAST.attempts - 1, heard
        assert all(name in line and "trying again" in line for line in heard)
        assert name not in await ledger(conn)
        assert not await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute"
            " WHERE attrelid = 'pgtasks.tasks'::regclass AND attname = 'probe')"
        )
    finally:
        await reader.close()
        await claimer.close()


async def test_a_delta_retried_while_the_blocker_ends_is_applied_once(
    dsn, conn, tmp_path, monkeypatch
):
    (name,) = with_deltas(tmp_path, monkeypatch, "ALTER TABLE pgtasks.tasks ADD COLUMN probe text;")
    reader = await asyncpg.connect(dsn)
    retried = asyncio.Event()
    heard: list[str] = []

    def report(line: str) -> None:
        heard.append(line)
        if len(heard) == 2:
            retried.set()

    try:
        await reader.execute("BEGIN; LOCK TABLE pgtasks.tasks IN ACCESS SHARE MODE")
        locks = LockPolicy(timeout=0.2, attempts=100, backoff=0.05, max_backoff=0.1)
        migrating = asyncio.create_task(migrate_url(dsn, locks=locks, report=report))
        await asyncio.wait_for(retried.wait(), 60)
        await reader.execute("COMMIT")
        assert [m.path.name for m in await migrating] == [name]
        assert name in await ledger(conn)
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM pg_attribute"
                " WHERE attrelid = 'pgtasks.tasks'::regclass AND attname = 'probe'"
            )
            == 1
        )
    finally:
        await reader.close()


NO_TX_TABLE = """
CREATE TABLE pgtasks.probe (k integer);
INSERT INTO pgtasks.probe VALUES (1), (1), (2);
ALTER TABLE pgtasks.probe ADD CONSTRAINT probe_positive CHECK (k > 0) NOT VALID;
"""

NO_TX_INDEXES = """-- pgtasks: no-transaction
-- Built without blocking writes; each statement can run again.
CREATE INDEX CONCURRENTLY IF NOT EXISTS probe_k ON pgtasks.probe (k);
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS probe_k_unique ON pgtasks.probe (k);
ALTER TABLE pgtasks.probe VALIDATE CONSTRAINT probe_positive;
"""

ONE_CONCURRENT_INDEX = """-- pgtasks: no-transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS probe_k ON pgtasks.probe (k);
"""

INDEX_STATE = """
SELECT c.relname, i.indisvalid
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid = 'pgtasks.probe'::regclass ORDER BY 1
"""
VALIDATED = "SELECT convalidated FROM pg_constraint WHERE conname = 'probe_positive'"


async def test_a_no_transaction_delta_that_fails_midway_is_finished_by_the_next_run(
    dsn, conn, tmp_path, monkeypatch
):
    table, indexes = with_deltas(tmp_path, monkeypatch, NO_TX_TABLE, NO_TX_INDEXES)
    # The duplicate key fails the unique build after its index was created: INVALID.
    with pytest.raises(asyncpg.UniqueViolationError):
        await migrate_url(dsn)
    assert await ledger(conn) >= {table} and indexes not in await ledger(conn)
    assert [tuple(r) for r in await conn.fetch(INDEX_STATE)] == [
        ("probe_k", True),
        ("probe_k_unique", False),
    ]
    assert await conn.fetchval(VALIDATED) is False

    await conn.execute(
        "DELETE FROM pgtasks.probe WHERE ctid = (SELECT max(ctid) FROM pgtasks.probe WHERE k = 1)"
    )
    assert [m.path.name for m in await migrate_url(dsn)] == [indexes]
    # The leftover was dropped and built again; the index that existed was kept.
    assert [tuple(r) for r in await conn.fetch(INDEX_STATE)] == [
        ("probe_k", True),
        ("probe_k_unique", True),
    ]
    assert await conn.fetchval(VALIDATED) is True
    assert indexes in await ledger(conn)
    assert await migrate_url(dsn) == []


async def test_a_concurrent_index_build_behind_an_old_snapshot_is_retried(
    dsn, conn, tmp_path, monkeypatch
):
    """CREATE INDEX CONCURRENTLY waits for every older snapshot; under the lock timeout it
    fails and leaves an INVALID index, which the retry drops before building again."""
    names = with_deltas(tmp_path, monkeypatch, NO_TX_TABLE, ONE_CONCURRENT_INDEX)
    old = await asyncpg.connect(dsn)
    retried = asyncio.Event()
    heard: list[str] = []

    def report(line: str) -> None:
        heard.append(line)
        retried.set()

    try:
        await old.execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1 FROM pgtasks.settings")
        old_pid = await old.fetchval("SELECT pg_backend_pid()")
        locks = LockPolicy(timeout=0.2, attempts=100, backoff=0.05, max_backoff=0.1)
        migrating = asyncio.create_task(migrate_url(dsn, locks=locks, report=report))
        await asyncio.wait_for(retried.wait(), 60)
        assert "statement 1" in heard[0] and f"pid {old_pid}" in heard[0], heard[0]
        await old.execute("COMMIT")
        assert [m.path.name for m in await migrating] == names
        assert [tuple(r) for r in await conn.fetch(INDEX_STATE)] == [("probe_k", True)]
    finally:
        await old.close()


async def test_two_migrators_and_a_concurrent_index_build_do_not_deadlock(
    server, tmp_path, monkeypatch
):
    """The second migrator polls for the advisory lock instead of waiting in it: a waiting
    session holds a snapshot, which the first one's concurrent build would wait for."""
    _, indexes = with_deltas(tmp_path, monkeypatch, NO_TX_TABLE, ONE_CONCURRENT_INDEX)
    admin = await asyncpg.connect(server.url())
    name = f"mig_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        # Two shipped deltas left to do, so the second migrator is waiting by the time the
        # first builds the index.
        await migrate_url(server.url(name), up_to=available()[-1].version - 4)
        results = await asyncio.gather(*(migrate_url(server.url(name)) for _ in range(2)))
        assert sorted(m.path.name for r in results for m in r)[-1] == indexes
        assert sum(len(r) for r in results) == 4, "each file once"
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


async def test_a_no_transaction_delta_holds_only_statements_that_can_run_again(
    dsn, conn, tmp_path, monkeypatch
):
    text = ONE_CONCURRENT_INDEX + "ALTER TABLE pgtasks.tasks ADD COLUMN probe text;\n"
    _, name = with_deltas(tmp_path, monkeypatch, NO_TX_TABLE, text)
    with pytest.raises(
        ConfigurationError, match=rf"{name} runs without a transaction.*statement 2"
    ):
        await migrate_url(dsn)
    assert name not in await ledger(conn)
    assert await conn.fetchval("SELECT to_regclass('pgtasks.probe_k')") is None, "nothing ran"
    marked = available()[-1]
    assert marked.no_transaction
    unmarked = Migration(marked.version, marked.name, tmp_path / "unmarked.sql")
    unmarked.path.write_text(marked.sql.split("\n", 1)[1])
    assert not unmarked.no_transaction
    assert unmarked.checksum != marked.checksum, "the marker changes what the file does"


def test_statements_split_at_top_level_semicolons_only():
    sql = (
        "-- a; comment\nCREATE FUNCTION f() RETURNS int LANGUAGE sql AS $b$ SELECT 1; $b$;\n"
        "SELECT 'a;b', \"x;y\" /* c; d */ FROM t;\n\n-- trailing; comment only\n"
    )
    assert statements(sql) == [
        "-- a; comment\nCREATE FUNCTION f() RETURNS int LANGUAGE sql AS $b$ SELECT 1; $b$",
        "SELECT 'a;b', \"x;y\" /* c; d */ FROM t",
    ]


def test_migrate_on_the_command_line_gives_up_in_one_line_naming_the_blocker(
    dsn, tmp_path, monkeypatch
):
    """The real CLI, pointed at the probe's sql/ the way the upgrade tests point it."""

    async def hold() -> tuple[asyncpg.Connection, int]:
        c = await asyncpg.connect(dsn, server_settings={"application_name": "held-open"})
        await c.execute("BEGIN; LOCK TABLE pgtasks.tasks IN ACCESS SHARE MODE")
        return c, await c.fetchval("SELECT pg_backend_pid()")

    with_deltas(tmp_path, monkeypatch, "ALTER TABLE pgtasks.tasks ADD COLUMN probe text;")
    loop = asyncio.new_event_loop()
    try:
        holder, pid = loop.run_until_complete(hold())
        proc = subprocess.run(
            pgtasks_command("--database-url", dsn, "migrate", "--lock-timeout", "0.2",
                            "--lock-attempts", "2", sql=tmp_path / "sql"),
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        loop.run_until_complete(holder.close())
    finally:
        loop.close()
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2, lines  # one retry, then the error
    assert "attempt 1 of 2" in lines[0]
    assert lines[1].startswith("error: ") and f"pid {pid}" in lines[1], lines[1]
    assert "'held-open'" in lines[1] and f"pg_terminate_backend({pid})" in lines[1]
