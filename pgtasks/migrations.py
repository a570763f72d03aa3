"""Builds and upgrades the pgtasks schema.

Two ways lead to the same catalog (tests/test_catalog.py compares them object by object):

- a database without pgtasks runs the topic files in sql/schema/, in name order, in one
  transaction: the current definition of everything, written once, in reading order. Every
  numbered migration is then recorded as applied;
- a database with pgtasks runs the numbered files in sql/ that it has not recorded yet, each
  in its own transaction with its ledger row: each one is a delta from the version before.

Two processes migrating at once serialise on an advisory lock, so the second finds the work
done.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from pgtasks.db import server_settings
from pgtasks.errors import ConfigurationError

# Any constant works; it only has to be the same for every pgtasks process.
MIGRATION_LOCK = 0x7067_7461_736B  # "pgtask"

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

# Releases up to 0.1.0 recorded a checksum of each file's bytes. These files have had
# comments corrected since; the byte checksum each had in 0.1.0 stays valid for them, so a
# database installed then keeps upgrading.
RELEASED_BYTE_CHECKSUMS: dict[int, str] = {
    3: "288aa60d6d616438844d29da3dcb604077ca9f65ceab7cc5c13f829cc1359632",
    4: "de931139f559cb704e1b289a598f86110f66fb5937e503e719df6ecc223cd7f4",
    5: "b001203f077ad2080a3da196739adf06a9bacc9b5409e8aabbd5f5aa4caac1fe",
    6: "723a7fa5ff1745cd35835c480407bb4206208324159853d9063a56d7d52ee606",
    7: "07829d30605fb1874b12d5e02b8b17db46c0cd6c8a5f6723b589fb4f3a5f7f4e",
    8: "a01350740bd2792c3a1601a36697ce474f3610b1e90792390301dd8d11dac8e8",
}

# The ledger belongs to the migrator, not to the schema's owner: it records what ran.
_LEDGER = """
CREATE TABLE IF NOT EXISTS pgtasks.migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text,
    applied_at timestamptz NOT NULL DEFAULT now())
"""

# SQL text without comments and with each run of whitespace made one space: what a checksum
# covers. Quoted strings and identifiers are kept whole, so a change inside one still counts.
_TOKENS = re.compile(
    r"""(?P<keep>'(?:[^']|'')*'|"(?:[^"]|"")*")"""
    r"""|(?P<drop>--[^\n]*|/\*.*?\*/)"""
    r"""|(?P<space>\s+)""",
    re.DOTALL,
)


def significant_text(sql: str) -> str:
    """The statements of a file as the server sees them, minus comments and layout."""

    def piece(m: re.Match[str]) -> str:
        if m.group("keep") is not None:
            return m.group("keep")
        return " "

    return re.sub(r" +", " ", _TOKENS.sub(piece, sql)).strip()


@dataclass(frozen=True)
class Migration:
    """One numbered delta file of sql/."""

    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        """Covers what the file does, not how it is commented or laid out: correcting a
        comment in an applied migration is no reason to refuse the database."""
        return "sql:" + hashlib.sha256(significant_text(self.sql).encode()).hexdigest()

    @property
    def byte_checksum(self) -> str:
        """The checksum releases before comment-insensitive checksums recorded."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def sql_dir() -> Path:
    """Inside a wheel the files sit at pgtasks/sql; in a checkout at ../sql."""
    here = Path(__file__).parent
    for candidate in (here / "sql", here.parent / "sql"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("pgtasks: cannot find the sql/ folder")


def available() -> list[Migration]:
    """The numbered delta files, in order."""
    found = []
    for path in sorted(sql_dir().glob("*.sql")):
        m = _NAME.match(path.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), path))
    return found


def topic_files() -> list[Path]:
    """The current schema, one file per topic, in reading (and running) order."""
    return sorted((sql_dir() / "schema").glob("*.sql"))


async def applied(conn: asyncpg.Connection) -> dict[int, str | None]:
    """Applied versions and the checksum each file had then."""
    exists = await conn.fetchval("SELECT to_regclass('pgtasks.migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, checksum FROM pgtasks.migrations")
    return {r["version"]: r["checksum"] for r in rows}


async def _record(conn: asyncpg.Connection, migs: list[Migration]) -> None:
    await conn.execute(_LEDGER)
    await conn.executemany(
        "INSERT INTO pgtasks.migrations (version, name, checksum) VALUES ($1, $2, $3)",
        [(m.version, m.name, m.checksum) for m in migs],
    )


async def install(conn: asyncpg.Connection) -> list[Migration]:
    """Build the schema from the topic files and record every migration as applied.

    Function bodies are checked when they first run rather than when created
    (check_function_bodies off, as pg_dump restores do), so a topic file may call a
    function that a later one defines.
    """
    migs = available()
    async with conn.transaction():
        await conn.execute("SET LOCAL check_function_bodies = off")
        for path in topic_files():
            await conn.execute(path.read_text())
        await conn.execute("RESET ROLE")
        await _record(conn, migs)
    return migs


async def migrate(
    conn: asyncpg.Connection, *, up_to: int | None = None, fresh: bool | None = None
) -> list[Migration]:
    """Bring the schema up to date and return the migrations this call applied.

    A database without pgtasks is built from the topic files; one with pgtasks gets the
    numbered deltas it lacks. `up_to` (upgrade tests) stops the deltas at that version and
    always builds through them; `fresh=False` does the same for the whole list.

    A file whose statements changed after it was applied is an error, not something to
    skip: the database would silently lack what the new file says.
    """
    done: list[Migration] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        have = await applied(conn)
        new_db = not have and not await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'pgtasks')"
        )
        if fresh is None:
            fresh = new_db and up_to is None
        if fresh:
            if not new_db:
                raise ConfigurationError(
                    "pgtasks: a fresh install needs a database without the pgtasks schema"
                )
            return await install(conn)
        for mig in available():
            if up_to is not None and mig.version > up_to:
                break
            if mig.version in have:
                accepted = (None, mig.checksum, mig.byte_checksum)
                if have[mig.version] not in (*accepted, RELEASED_BYTE_CHECKSUMS.get(mig.version)):
                    raise ConfigurationError(
                        f"migration {mig.path.name} changed after it was applied to this "
                        "database; migrations are append-only, so add a new numbered file. "
                        "(A throwaway embedded database: `pgtasks db stop && rm -rf .pgtasks`.)"
                    )
                continue
            async with conn.transaction():
                await conn.execute(mig.sql)
                await conn.execute("RESET ROLE")
                await _record(conn, [mig])
            done.append(mig)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return done


async def migrate_url(
    url: str, *, up_to: int | None = None, fresh: bool | None = None
) -> list[Migration]:
    """`migrate` on a connection of its own, its search_path pinned like every other: a view,
    constraint or index expression is stored as it resolves when created, so an operator
    planted in `public` must never be in reach while the schema is built."""
    conn = await asyncpg.connect(url, server_settings=server_settings("pgtasks migrate"))
    try:
        return await migrate(conn, up_to=up_to, fresh=fresh)
    finally:
        await conn.close()
