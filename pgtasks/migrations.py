"""Applies the numbered files in sql/ once each, in order, recorded in pgtasks.migrations.

Two processes migrating at once serialise on an advisory lock, so the second one finds
the work done. Each file runs in its own transaction with its version row.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from pgtasks.errors import ConfigurationError

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

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


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


async def applied(conn: asyncpg.Connection) -> dict[int, str | None]:
    """Applied versions and the checksum each file had then."""
    exists = await conn.fetchval("SELECT to_regclass('pgtasks.migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, checksum FROM pgtasks.migrations")
    return {r["version"]: r["checksum"] for r in rows}


async def migrate(conn: asyncpg.Connection, *, up_to: int | None = None) -> list[Migration]:
    """Bring the schema up to date (or up to version `up_to`, for upgrade tests); return
    the migrations this call applied.

    A file that changed after it was applied is an error, not something to skip: the
    database would silently lack what the new file says.
    """
    done: list[Migration] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        have = await applied(conn)
        for mig in available():
            if up_to is not None and mig.version > up_to:
                break
            if mig.version in have:
                if have[mig.version] not in (None, mig.checksum):
                    raise ConfigurationError(
                        f"migration {mig.path.name} changed after it was applied to this "
                        "database; migrations are append-only, so add a new numbered file. "
                        "(A throwaway embedded database: `pgtasks db stop && rm -rf .pgtasks`.)"
                    )
                continue
            async with conn.transaction():
                await conn.execute(mig.sql)
                await conn.execute(
                    """CREATE TABLE IF NOT EXISTS pgtasks.migrations (
                           version integer PRIMARY KEY,
                           name text NOT NULL,
                           checksum text,
                           applied_at timestamptz NOT NULL DEFAULT now())"""
                )
                await conn.execute(
                    "INSERT INTO pgtasks.migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    mig.version,
                    mig.name,
                    mig.checksum,
                )
            done.append(mig)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return done


async def migrate_url(url: str, *, up_to: int | None = None) -> list[Migration]:
    conn = await asyncpg.connect(url)
    try:
        return await migrate(conn, up_to=up_to)
    finally:
        await conn.close()
