"""The REINDEX CONCURRENTLY procedure of docs/operations.md, run on a live queue."""

from __future__ import annotations

import asyncio
import re

import pytest

from pgtasks import Client, Worker
from tests.conftest import until
from tests.fleet import ROOT

SECTION = "## Rebuilding indexes"


def documented_statements() -> list[str]:
    """The statements of the section's sql block, as a reader would paste them."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sql\n(.*?)```", section, re.S)
    assert block is not None, "the section has no sql block"
    lines = [ln for ln in block.group(1).splitlines() if not ln.lstrip().startswith("--")]
    return [st.strip() for st in "\n".join(lines).split(";") if st.strip()]


INDEX_FILES = """
SELECT c.relname, c.relfilenode FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'pgtasks' AND c.relkind = 'i' AND c.relname NOT LIKE '%_ccnew%'
"""


@pytest.mark.slow
async def test_documented_reindex_runs_while_the_queue_drains_and_loses_nothing(dsn, conn):
    rebuild, check = documented_statements()
    assert rebuild.startswith("REINDEX") and "CONCURRENTLY" in rebuild
    before = dict(await conn.fetch(INDEX_FILES))
    w = Worker(dsn, concurrency=8, poll_interval=0.1)
    running = asyncio.create_task(w.run())
    try:
        await asyncio.wait_for(w.ready.wait(), 30)
        async with Client(dsn) as client:
            first = await client.submit_many("add", [{"a": i, "b": 1} for i in range(200)])
            await until(lambda: w.stats.succeeded > 20, what="the worker draining")
            reindex = asyncio.create_task(conn.execute(rebuild))
            more: list[int] = []
            while not reindex.done():  # producers go on submitting during the rebuild
                more += await client.submit_many("add", [{"a": i, "b": 2} for i in range(20)])
                await asyncio.sleep(0.05)
            await reindex
            assert more  # the rebuild ran beside submits (and the drain)
            assert await conn.fetch(check) == []  # no invalid index left
            ids = first + more
            await until(lambda: w.stats.succeeded >= len(ids), timeout=120, what="every task done")
    finally:
        w.stop()
        await asyncio.wait_for(running, 60)
    rows = await conn.fetch("SELECT id, params, status::text, attempt, result FROM pgtasks.tasks")
    assert sorted(r["id"] for r in rows) == sorted(ids)
    assert all(r["status"] == "DONE" and r["attempt"] == 1 for r in rows)
    assert all(r["result"] == {"sum": r["params"]["a"] + r["params"]["b"]} for r in rows)
    after = dict(await conn.fetch(INDEX_FILES))
    assert after.keys() == before.keys()
    assert all(after[name] != before[name] for name in before)  # every index was rebuilt
