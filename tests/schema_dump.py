"""The committed schema (sql/schema.sql): how it is made and how dumps are compared.

`make schema` (or `python -m tests.schema_dump`) builds a database from every migration on
a throwaway embedded server and writes the normalised `pg_dump --schema-only` of the
pgtasks schema to sql/schema.sql. tests/test_schema_drift.py checks that the migrations
still produce exactly that file, so every schema change shows up in review as a diff.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg

from pgtasks.embedded import EmbeddedPostgres, _bin_dir
from pgtasks.migrations import migrate_url

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "sql" / "schema.sql"
REGENERATE = "make schema  (or: .venv/bin/python -m tests.schema_dump)"
HEADER = (
    "-- The pgtasks schema as the migrations in sql/ build it. Generated, do not edit:\n"
    f"-- {REGENERATE}\n"
    "-- tests/test_schema_drift.py fails when the migrations and this file disagree.\n\n"
)


def dump_schema(url: str) -> str:
    """`pg_dump --schema-only` of the pgtasks schema, normalised."""
    out = subprocess.run(
        [str(_bin_dir() / "pg_dump"), "--schema-only", "--schema=pgtasks", f"--dbname={url}"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return normalise(out)


def normalise(dump: str) -> str:
    """Only the definitions: no comments, session SETs, version headers or the random
    `\\restrict` keys of recent pg_dump releases; one blank line between statements."""
    kept: list[str] = []
    for line in dump.splitlines():
        line = line.rstrip()
        if line.startswith(("--", "SET ", "SELECT pg_catalog.set_config", "\\")):
            continue
        if not line and (not kept or not kept[-1]):
            continue
        kept.append(line)
    return "\n".join(kept).strip() + "\n"


def committed() -> str:
    return normalise(SCHEMA_FILE.read_text()) if SCHEMA_FILE.exists() else ""


async def build_and_dump(server: EmbeddedPostgres, name: str = "pgtasks_schema") -> str:
    admin = await asyncpg.connect(server.url())
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name}")
        await admin.execute(f"CREATE DATABASE {name}")
        try:
            await migrate_url(server.url(name))
            return dump_schema(server.url(name))
        finally:
            await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="pgtasks-schema-") as tmp:
        server = EmbeddedPostgres(Path(tmp))
        server.start()
        try:
            schema = asyncio.run(build_and_dump(server))
        finally:
            server.destroy()
    SCHEMA_FILE.write_text(HEADER + schema)
    print(f"wrote {SCHEMA_FILE} ({len(schema.splitlines())} lines)", file=sys.stderr)


if __name__ == "__main__":
    main()
