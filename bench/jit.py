"""Claim time with JIT on and off, against a server you name (sql/0014 says why).

    python -m bench.jit --dsn postgresql://postgres@127.0.0.1:5432/scratch [--up-to N]

Migrates the database (up to migration N if given), then in one session submits tasks and
claims and finishes them, 20 claims of 100 and 20 of 1, first with `SET jit = on`, then
with `jit = off`, and prints the median claim time of each. Only a server with a JIT
provider (LLVM; e.g. Debian's or the PGDG packages) can show a difference; the embedded
server of `make bench` has none. Use a scratch database: it leaves tasks behind.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import asyncpg

from pgtasks.migrations import migrate_url

CLAIM = "SELECT * FROM pgtasks.claim_tasks(worker_id => 'bench-jit', max_tasks => $1)"
FINISH = (
    "SELECT * FROM pgtasks.finish_tasks(task_ids => $1, attempts => $2, results => $3::jsonb[])"
)


async def claim_ms(conn: asyncpg.Connection, batch: int) -> float:
    await conn.execute(
        "SELECT pgtasks.submit_tasks('bench.noop', array_fill('{}'::jsonb, ARRAY[$1::int]))", batch
    )
    started = time.perf_counter()
    rows = await conn.fetch(CLAIM, batch)
    ms = (time.perf_counter() - started) * 1000
    await conn.fetch(
        FINISH, [r["id"] for r in rows], [r["attempt"] for r in rows], [None] * len(rows)
    )
    return ms


async def main(dsn: str, up_to: int | None) -> None:
    await migrate_url(dsn, up_to=up_to)
    conn = await asyncpg.connect(dsn)
    try:
        print(await conn.fetchval("SELECT version()"))
        for jit in ("on", "off"):
            await conn.execute(f"SET jit = {jit}")
            for batch in (100, 1):
                times = [await claim_ms(conn, batch) for _ in range(20)]
                print(f"jit = {jit}: claim of {batch}: median {statistics.median(times):.2f} ms")
    finally:
        await conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--up-to", type=int, default=None)
    args = parser.parse_args()
    asyncio.run(main(args.dsn, args.up_to))
