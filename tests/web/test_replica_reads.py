"""Reads from a replica, against a real streaming replica of the test's server.

The replica is made the way an operator makes one: pg_basebackup from the primary, with the
embedded server's own binaries, started as a hot standby that streams from it. The app of
`pgtasks serve` gets the primary as its database and the replica as its read database, and
each logs in as a role of its own whose sessions log every statement (role settings are
replicated; each server writes its own log). So the primary's log says exactly what the
app sent it: nothing while pages, GET endpoints and the CLI read, then the cancel. The
replica's own log, and a task the replica shows PENDING while replay is paused after the
primary cancelled it, show where the reads went.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from pgtasks import db
from pgtasks.embedded import EmbeddedPostgres
from pgtasks.fastapi import STATE_READER
from pgtasks.web import WebSettings, create_app
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

#: The start of each entry in a server log (log_line_prefix '%m [%p] ').
ENTRY = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", re.M)


class Standby:
    def __init__(self, server: EmbeddedPostgres, url: str) -> None:
        self.server, self.url = server, url


@pytest.fixture
def standby(server: EmbeddedPostgres, dsn: str, tmp_path: Path) -> Iterator[Standby]:
    """A hot standby of the session's server, streaming from it; its URL names the test's
    database. pg_basebackup runs as the server does (in a user namespace when we are
    root), so the copy's files belong to the user the standby runs as."""
    replica = EmbeddedPostgres(tmp_path / "standby", bin_dir=server.bin_dir)
    replica.root.mkdir()
    port = server.status().port
    basebackup = [
        str(server.bin_dir / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(port),
        "-U", "postgres", "-D", str(replica.data_dir), "-R", "-X", "stream", "-c", "fast",
    ]  # fmt: skip
    replica._run(basebackup, timeout=120)
    try:
        replica.start(create=False)
        yield Standby(replica, replica.url(dsn.rsplit("/", 1)[1]))
    finally:
        replica.destroy()


def statements(log: Path, since: int) -> list[str]:
    """The statements logged after byte `since` (log_statement entries only)."""
    text = log.read_bytes()[since:].decode(errors="replace")
    starts = [m.start() for m in ENTRY.finditer(text)] + [len(text)]
    entries = [text[a:b] for a, b in itertools.pairwise(starts)]
    return [e for e in entries if re.search(r"LOG:  (statement|execute [^:]*):", e)]


def cli(primary: str, replica: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`pgtasks --read-database-url REPLICA ...` with the primary as PGTASKS_DATABASE_URL;
    any lag at all counts as stale (PGTASKS_READ_LAG_THRESHOLD=0)."""
    env = {**os.environ, "PGTASKS_DATABASE_URL": primary, "PGTASKS_READ_LAG_THRESHOLD": "0",
           "COLUMNS": "200"}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "pgtasks.cli", "--read-database-url", replica, *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def as_role(url: str, role: str) -> str:
    return url.replace("postgresql://postgres@", f"postgresql://{role}@", 1)


@pytest.fixture
async def roles(conn: asyncpg.Connection) -> AsyncIterator[tuple[str, str]]:
    """(writer, reader): admins whose every statement is logged, for the app's two Clients."""
    suffix = uuid.uuid4().hex[:8]
    names = (f"web_writer_{suffix}", f"web_reader_{suffix}")
    for role in names:
        await conn.execute(
            f"CREATE ROLE {role} LOGIN; GRANT pgtasks_admin TO {role}; "
            f"ALTER ROLE {role} SET log_statement = 'all'"
        )
    try:
        yield names
    finally:
        for role in names:
            await conn.execute(f"DROP ROLE {role}")


async def until(check, what: str, timeout: float = 60) -> None:
    """Wait for an async condition; the timeout only bounds a broken test."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, f"not reached: {what}"
        await asyncio.sleep(0.05)


async def test_reads_go_to_the_replica_and_writes_to_the_primary(dsn, conn, server, standby, roles):
    writer, reader = roles
    ids = [
        await conn.fetchval("SELECT pgtasks.submit_task('noop', $1::jsonb)", {"i": i})
        for i in range(3)
    ]
    target = ids[0]
    replica = await asyncpg.connect(standby.url)
    try:
        # The replica has the tasks and the roles; caught up, its lag is 0 however long
        # the primary then stays idle.
        async def caught_up() -> bool:
            row = await replica.fetchrow(
                "SELECT (SELECT count(*) FROM pgtasks.tasks) AS n,"
                " (SELECT lag_seconds FROM pgtasks.replica_lag) AS lag,"
                " (SELECT in_recovery FROM pgtasks.replica_lag) AS standby"
            )
            return bool(row["n"] == 3 and row["lag"] == 0 and row["standby"])

        await until(caught_up, "the replica replays the tasks")

        settings = WebSettings(
            database_url=as_role(dsn, writer),
            read_database_url=as_role(standby.url, reader),
            read_lag_threshold=0,
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            pool = getattr(app.state, STATE_READER).pool
            assert await pool.fetchval("SHOW search_path") == db.SEARCH_PATH
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as h:
                # The Clients have opened their first connections: from here on, the
                # primary's log holds every statement the app sends it.
                mark = server.log_file.stat().st_size
                replica_mark = standby.server.log_file.stat().st_size
                reads = [
                    "/", "/tasks", f"/tasks/{target}", "/failed", "/queues", "/schedules",
                    "/workflows", "/api/tasks", f"/api/tasks/{target}",
                    f"/api/tasks/{target}/logs", f"/api/tasks/{target}/history",
                    f"/api/tasks/{target}/inbox", "/api/queues", "/api/queues/settings",
                    "/api/workers", "/api/workers/active", "/api/stranded", "/api/schedules",
                    "/api/replica",
                ]  # fmt: skip
                for path in reads:
                    r = await h.get(path)
                    assert r.status_code == 200, (path, r.text)
                assert (await h.get("/api/tasks")).json()["total"] == 3
                lag = (await h.get("/api/replica")).json()
                assert lag["in_recovery"] and lag["receiving"], lag

                # The CLI's read-only commands, as a real process, read the replica too.
                urls = as_role(dsn, writer), as_role(standby.url, reader)
                ls = cli(*urls, "ls")
                assert ls.returncode == 0, ls.stderr
                assert f"│ {target} " in ls.stdout and "PENDING" in ls.stdout, ls.stdout

                assert statements(server.log_file, mark) == []
                on_replica = statements(standby.server.log_file, replica_mark)
                assert any("pgtasks.task_status" in s for s in on_replica), on_replica

                # /metrics: the task gauges from the replica, the table statistics (which
                # a replica does not keep) from the primary, and nothing else there.
                r = await h.get("/metrics")
                assert r.status_code == 200, r.text
                assert "pgtasks_read_replica_lag_seconds " in r.text, r.text
                assert 'pgtasks_table_dead_tuples{table="tasks"}' in r.text
                assert 'pgtasks_xmin_horizon_age{source="session"}' in r.text
                assert 'pgtasks_tasks{queue="default",status="PENDING"} 3.0' in r.text
                sent = [s for s in statements(server.log_file, mark) if "RESET ALL" not in s]
                assert len(sent) == 1 and "pgtasks.table_health" in sent[0], sent

                # A write goes to the primary. With replay paused, the replica still
                # shows the task PENDING, and every page says it is behind.
                await replica.execute("SELECT pg_wal_replay_pause()")
                mark = server.log_file.stat().st_size
                r = await h.post(f"/api/tasks/{target}/cancel")
                assert r.status_code == 200, r.text
                assert r.json()["previous_status"] == "PENDING"
                sent = statements(server.log_file, mark)
                assert any("pgtasks.cancel_task" in s for s in sent), sent
                status = "SELECT status::text FROM pgtasks.tasks WHERE id = $1"
                assert await conn.fetchval(status, target) == "CANCELLED"

                async def stale() -> bool:
                    return bool((await h.get("/api/replica")).json()["stale"])

                await until(stale, "the replica receives the cancel and says it is behind")
                assert (await h.get(f"/api/tasks/{target}")).json()["status"] == "PENDING"
                page = await h.get("/")
                assert "behind its primary" in page.text, page.text
                assert "reads from a replica" in page.text
                shown = cli(*urls, "status", str(target))
                assert shown.returncode == 0, shown.stderr
                assert "PENDING" in shown.stdout, shown.stdout
                assert "behind its primary" in shown.stderr, shown.stderr

                await replica.execute("SELECT pg_wal_replay_resume()")

                async def replayed() -> bool:
                    task = (await h.get(f"/api/tasks/{target}")).json()
                    return bool(task["status"] == "CANCELLED")

                await until(replayed, "the replica replays the cancel")

                async def fresh() -> bool:
                    return not await stale()

                await until(fresh, "the replica is caught up again")

                async def no_banner() -> bool:
                    return "behind its primary" not in (await h.get("/")).text

                # A caught-up replica's lag is 0 (any WAL the primary writes meanwhile,
                # a standby snapshot every 15 s, is behind replay for a moment only).
                await until(no_banner, "the pages stop saying the replica is behind")
    finally:
        await replica.close()
