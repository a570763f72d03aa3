"""A claim commits without waiting for its WAL flush; nothing else does.

The claim's commit may be lost in a crash (the task runs once more, which at-least-once
allows), but never the submit's, a finish's or a checkpoint's, and a lost claim's token
never comes back. These tests make the crash deterministic: the server's processes that
flush WAL in the background (WAL writer, background writer, checkpointer) are stopped with
SIGSTOP before the claim, so the claim's commit is still only in shared memory when every
server process is killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from pgtasks.embedded import EmbeddedPostgres
from tests.fleet import fresh_conn, start_private_server

pytestmark = pytest.mark.slow

FLUSHERS = ("walwriter", "background writer", "checkpointer")
TOKEN_REFUSED = "PT002"


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def crash(server: EmbeddedPostgres) -> None:
    """SIGKILL the postmaster and every child, stopped ones included: nothing gets to flush."""
    pid = server.status().pid
    assert pid is not None
    children = _children(pid)
    os.kill(pid, signal.SIGKILL)
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    # Until every process is reaped, not only dead: a new postmaster refuses to start while
    # the old pid still answers, and a zombie does.
    for _ in range(600):
        if not any(_exists(p) for p in [pid, *children]):
            return
        time.sleep(0.05)
    raise AssertionError(f"server processes of {pid} still there after SIGKILL")


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
async def crashable(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedPostgres, str]]:
    server, url = await start_private_server(tmp_path / "pg")
    try:
        yield server, url
    finally:
        await asyncio.to_thread(server.destroy)


async def stop_flushers(conn: asyncpg.Connection) -> None:
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = ANY ($1::text[])", list(FLUSHERS)
    )
    assert len(rows) == len(FLUSHERS)
    for r in rows:
        os.kill(r["pid"], signal.SIGSTOP)


async def unflushed(conn: asyncpg.Connection) -> bool:
    """Whether WAL written so far is not all on disk (a read-only query writes none)."""
    return bool(
        await conn.fetchval("SELECT pg_current_wal_flush_lsn() < pg_current_wal_insert_lsn()")
    )


async def test_a_claim_lost_in_a_crash_runs_again_and_its_token_is_refused(crashable):
    server, url = crashable
    async with fresh_conn(url) as conn:
        ids = await conn.fetchval(
            "SELECT array_agg(s.id) FROM pgtasks.submit_tasks(task_type => 'job', "
            "params_list => ARRAY(SELECT jsonb_build_object('n', g) "
            "FROM generate_series(1, 20) g)) AS s(id)"
        )
        await stop_flushers(conn)
        # Acknowledged: the claim's answer is in hand, as a worker would have it.
        claimed = await conn.fetch("SELECT id, lease_token FROM pgtasks.claim_tasks('w1', NULL, 5)")
        assert len(claimed) == 5
        # The claim's commit returned before its WAL reached the disk.
        assert await unflushed(conn)
    await asyncio.to_thread(crash, server)
    await asyncio.to_thread(server.start)

    async with fresh_conn(url) as conn:
        rows = await conn.fetch("SELECT id, status::text, attempt FROM pgtasks.tasks ORDER BY id")
        # Every submitted task survived; the lost claims are PENDING again, attempt 0.
        assert [r["id"] for r in rows] == sorted(ids)
        assert {(r["status"], r["attempt"]) for r in rows} == {("PENDING", 0)}
        # The lost claim's holder comes back with its result: refused, nothing written.
        for c in claimed:
            with pytest.raises(asyncpg.PostgresError) as refused:
                await conn.execute(
                    "SELECT pgtasks.finish_task($1, $2, '{\"late\": true}')",
                    c["id"],
                    c["lease_token"],
                )
            assert refused.value.sqlstate == TOKEN_REFUSED
        # The tasks run once more, and only once: a new claim, a new token.
        again = await conn.fetch("SELECT id, lease_token FROM pgtasks.claim_tasks('w2', NULL, 20)")
        assert {r["id"] for r in again} == set(ids)
        assert not {r["lease_token"] for r in again} & {c["lease_token"] for c in claimed}
        for r in again:
            await conn.execute("SELECT pgtasks.finish_task($1, $2)", r["id"], r["lease_token"])
        done = await conn.fetch("SELECT status::text, attempt, result FROM pgtasks.tasks")
        assert {(d["status"], d["attempt"], d["result"]) for d in done} == {("DONE", 1, None)}


async def test_writes_after_a_claim_in_its_transaction_stay_durable(crashable):
    server, url = crashable
    async with fresh_conn(url) as conn:
        await conn.execute("SELECT pgtasks.submit_task(task_type => 'job')")
        await stop_flushers(conn)
        async with conn.transaction():
            await conn.fetch("SELECT * FROM pgtasks.claim_tasks('w1')")
            assert await conn.fetchval("SHOW synchronous_commit") == "off"
            # A submit in the same transaction: its task is acknowledged, so the commit waits.
            await conn.execute("SELECT pgtasks.submit_task(task_type => 'job')")
            assert await conn.fetchval("SHOW synchronous_commit") == "on"
        assert not await unflushed(conn)
        # A claim that is not its transaction's first write leaves the commit durable.
        async with conn.transaction():
            await conn.execute("SELECT pgtasks.submit_task(task_type => 'job')")
            await conn.fetch("SELECT * FROM pgtasks.claim_tasks('w1')")
            assert await conn.fetchval("SHOW synchronous_commit") == "on"
        assert not await unflushed(conn)
        # So is a checkpoint's, though the claim came first.
        async with conn.transaction():
            third = await conn.fetchrow("SELECT id, lease_token FROM pgtasks.claim_tasks('w1')")
            await conn.execute(
                "SELECT pgtasks.checkpoint($1, $2, 'step-1', '1')",
                third["id"],
                third["lease_token"],
            )
        assert not await unflushed(conn)
    await asyncio.to_thread(crash, server)
    await asyncio.to_thread(server.start)

    async with fresh_conn(url) as conn:
        statuses = await conn.fetch("SELECT status::text FROM pgtasks.tasks")
        assert [r["status"] for r in statuses] == ["RUNNING"] * 3
        steps = await conn.fetchval("SELECT count(*) FROM pgtasks.task_steps")
        assert steps == 1


async def test_claims_stay_durable_with_synchronous_standbys(crashable):
    """With synchronous replication a failover must not forget a claim whose task ran."""
    _, url = crashable
    async with fresh_conn(url) as conn:
        await conn.execute("SELECT pgtasks.submit_task(task_type => 'job')")
        await conn.execute("ALTER SYSTEM SET synchronous_standby_names = 'replica1'")
        await conn.execute("SELECT pg_reload_conf()")
    # A new session reads the reloaded setting at once.
    async with fresh_conn(url) as conn:
        assert await conn.fetchval("SHOW synchronous_standby_names") == "replica1"
        tr = conn.transaction()
        await tr.start()
        await conn.fetch("SELECT * FROM pgtasks.claim_tasks('w1')")
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
        # No standby is there, so a commit would wait for it: roll back.
        await tr.rollback()
