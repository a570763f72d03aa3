"""Migrations: numbered, recorded, idempotent, and safe when two processes run them at once."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import subprocess
import uuid
from pathlib import Path

import asyncpg
import pytest

from pgtasks.migrations import RELEASED_BYTE_CHECKSUMS, available, migrate_url

# The commit of release 0.1.0, the last whose ledger recorded byte checksums.
RELEASED = "4886c07"


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


async def test_a_changed_statement_is_refused_and_a_changed_comment_is_not(
    server, tmp_path, monkeypatch
):
    import pgtasks.migrations as m
    from pgtasks.errors import ConfigurationError

    admin = await asyncpg.connect(server.url())
    name = f"mig_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        await migrate_url(server.url(name))
        changed = tmp_path / "sql"
        changed.mkdir()
        (changed / "schema").symlink_to(m.sql_dir() / "schema")
        for mig in available():
            # A no-transaction marker says how the file runs, so it counts: it stays as it is.
            marker, text = "", mig.sql
            if mig.no_transaction:
                first, _, text = text.partition("\n")
                marker = first + "\n"
            text = marker + text.replace("--", "--  reworded:", 3).replace("\n", "\n\n", 5)
            (changed / mig.path.name).write_text(text + "\n-- a corrected comment\n")
        monkeypatch.setattr(m, "sql_dir", lambda: changed)
        assert await migrate_url(server.url(name)) == [], "comments and layout changed only"

        first = changed / available()[0].path.name
        first.write_text(first.read_text() + "\nSELECT 1;\n")
        with pytest.raises(
            ConfigurationError, match=r"0001_schema\.sql changed after it was applied"
        ):
            await migrate_url(server.url(name))
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


async def test_a_ledger_of_byte_checksums_from_older_releases_is_accepted(server):
    admin = await asyncpg.connect(server.url())
    name = f"mig_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        await migrate_url(server.url(name))
        conn = await asyncpg.connect(server.url(name))
        try:
            for mig in available():
                await conn.execute(
                    "UPDATE pgtasks.migrations SET checksum = $2 WHERE version = $1",
                    mig.version,
                    mig.byte_checksum,
                )
        finally:
            await conn.close()
        assert await migrate_url(server.url(name)) == []
        # A 0.1.0 ledger: the files whose comments were corrected since had other bytes.
        conn = await asyncpg.connect(server.url(name))
        try:
            for version, checksum in RELEASED_BYTE_CHECKSUMS.items():
                await conn.execute(
                    "UPDATE pgtasks.migrations SET checksum = $2 WHERE version = $1",
                    version,
                    checksum,
                )
        finally:
            await conn.close()
        assert await migrate_url(server.url(name)) == []
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


def test_the_released_byte_checksums_are_those_of_the_released_files():
    """Each recorded checksum is the sha256 of the file as release 0.1.0 shipped it."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs the repository's history")
    names = {m.version: m.path.name for m in available()}
    for version, checksum in RELEASED_BYTE_CHECKSUMS.items():
        shipped = subprocess.run(
            ["git", "show", f"{RELEASED}:sql/{names[version]}"],
            cwd=root, capture_output=True, check=True,
        ).stdout  # fmt: skip
        assert hashlib.sha256(shipped).hexdigest() == checksum, names[version]
