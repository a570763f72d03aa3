"""The same SQL and worker run on an older PostgreSQL (the distribution's), when it is installed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pgtasks import Client, Worker
from pgtasks.embedded import EmbeddedPostgres
from pgtasks.migrations import migrate_url

OLDER = sorted(Path("/usr/lib/postgresql").glob("1[4-7]/bin/pg_ctl"))


@pytest.mark.skipif(
    not OLDER, reason="no PostgreSQL 14-17 server binaries under /usr/lib/postgresql"
)
@pytest.mark.slow
async def test_core_flow_on_older_postgresql(tmp_path):
    pg = EmbeddedPostgres(tmp_path / "old", bin_dir=OLDER[0].parent)
    try:
        url = await asyncio.to_thread(pg.start)
        await migrate_url(url)
        async with Client(url) as client:
            version = await client.pool.fetchval("SHOW server_version_num")
            assert int(version) < 180000
            tid = await client.submit("sync_add", {"a": 20, "b": 22})
            worker = Worker(url, poll_interval=0.1)
            run = asyncio.create_task(worker.run())
            try:
                async with asyncio.timeout(60):
                    while (await client.get(tid)).status != "DONE":
                        await asyncio.sleep(0.05)
            finally:
                worker.stop()
                await run
            assert (await client.get(tid)).result == 42
    finally:
        await asyncio.to_thread(pg.destroy)
