"""Migrations: numbered, recorded, idempotent, and safe when two processes run them at once."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from pgtasks.migrations import available, migrate_url


async def test_concurrent_migrate_applies_each_file_once(server):
    admin = await asyncpg.connect(server.url())
    name = f"mig_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE DATABASE {name}")
    url = server.url(name)
    try:
        results = await asyncio.gather(*(migrate_url(url) for _ in range(3)))
        applied = sorted(m.version for r in results for m in r)
        assert applied == [m.version for m in available()], "each file ran exactly once"
        assert await migrate_url(url) == []  # idempotent
        conn = await asyncpg.connect(url)
        try:
            versions = [
                r[0] for r in await conn.fetch("SELECT version FROM pgtasks.migrations ORDER BY 1")
            ]
            assert versions == [m.version for m in available()]
            assert await conn.fetchval("SELECT pgtasks.submit_task('x')") == 1
        finally:
            await conn.close()
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


def test_files_are_numbered_without_gaps():
    versions = [m.version for m in available()]
    assert versions == list(range(1, len(versions) + 1))


async def test_a_changed_migration_file_is_a_clear_error(server, tmp_path, monkeypatch):
    import pgtasks.migrations as m
    from pgtasks.errors import ConfigurationError

    admin = await asyncpg.connect(server.url())
    name = f"mig_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        await migrate_url(server.url(name))
        changed = tmp_path / "sql"
        changed.mkdir()
        for mig in available():
            (changed / mig.path.name).write_text(mig.sql + "\n-- edited later\n")
        monkeypatch.setattr(m, "sql_dir", lambda: changed)
        with pytest.raises(
            ConfigurationError, match=r"0001_schema\.sql changed after it was applied"
        ):
            await migrate_url(server.url(name))
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()
