"""Applies the numbered files in sql/ once each, in order, recorded in pgtasks.migrations.

Two processes migrating at once serialise on an advisory lock, so the second one finds
the work done. Each file runs in its own transaction with its version row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

# Any constant works; it only has to be the same for every pgtasks process.
MIGRATION_LOCK = 0x7067_7461_736B  # "pgtask"

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text()


def sql_dir() -> Path:
    """Inside a wheel the files sit at pgtasks/sql; in a checkout at ../sql."""
    here = Path(__file__).parent
    for candidate in (here / "sql", here.parent / "sql"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("pgtasks: cannot find the sql/ migrations folder")


def available() -> list[Migration]:
    found = []
    for path in sorted(sql_dir().glob("*.sql")):
        m = _NAME.match(path.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), path))
    return found


async def applied(conn: asyncpg.Connection) -> set[int]:
    exists = await conn.fetchval("SELECT to_regclass('pgtasks.migrations') IS NOT NULL")
    if not exists:
        return set()
    return {r["version"] for r in await conn.fetch("SELECT version FROM pgtasks.migrations")}


async def migrate(conn: asyncpg.Connection) -> list[Migration]:
    """Bring the schema up to date; return the migrations this call applied."""
    done: list[Migration] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        have = await applied(conn)
        for mig in available():
            if mig.version in have:
                continue
            async with conn.transaction():
                await conn.execute(mig.sql)
                await conn.execute(
                    """CREATE TABLE IF NOT EXISTS pgtasks.migrations (
                           version integer PRIMARY KEY,
                           name text NOT NULL,
                           applied_at timestamptz NOT NULL DEFAULT now())"""
                )
                await conn.execute(
                    "INSERT INTO pgtasks.migrations (version, name) VALUES ($1, $2)",
                    mig.version,
                    mig.name,
                )
            done.append(mig)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return done


async def migrate_url(url: str) -> list[Migration]:
    conn = await asyncpg.connect(url)
    try:
        return await migrate(conn)
    finally:
        await conn.close()
