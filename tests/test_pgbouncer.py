"""Polling-only workers behind a real PgBouncer in transaction mode.

In transaction mode every transaction may run on a different server connection, so
LISTEN never hears anything and named prepared statements vanish between statements.
`pgtasks worker --pgbouncer` (= `--no-listen --no-prepared`) must still do all the work:
claims, heartbeats, retries, results. Needs the `pgbouncer` binary (Debian package
`pgbouncer`; .ci/run installs it); skipped with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from pgtasks import Client, db
from pgtasks.embedded import NAMESPACE_UID
from tests.fleet import Fleet, wait_until

pytestmark = pytest.mark.slow

PGBOUNCER = shutil.which("pgbouncer") or next(
    (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def pgbouncer(dsn: str, tmp_path: Path) -> Iterator[str]:
    """A transaction-mode PgBouncer on a free loopback port in front of this test's database;
    yields the DSN that goes through it."""
    if PGBOUNCER is None:
        pytest.skip("pgbouncer binary not found; install the Debian package `pgbouncer`")
    prefix: list[str] = []
    if os.geteuid() == 0:  # PgBouncer refuses to run as root, like PostgreSQL
        unshare = shutil.which("unshare")
        if unshare is None:
            pytest.skip("running as root and `unshare` (util-linux) is missing for pgbouncer")
        uid = f"{NAMESPACE_UID}"
        prefix = [unshare, "--user", f"--map-user={uid}", f"--map-group={uid}"]
    target = dsn.split("@", 1)[1]  # 127.0.0.1:PORT/DBNAME
    host_port, dbname = target.split("/", 1)
    host, pg_port = host_port.split(":")
    port = _free_port()
    # Where an operator pins pgtasks' search_path behind PgBouncer (see pgtasks.db): on the
    # server, so that it survives a client's RESET ALL on the shared server connection. The
    # tasks' own SQL (ctx.pool) gets it too, hence `public.test_runs` in tests/apps/basic.py.
    asyncio.run(_pin_search_path(dsn, dbname))
    (tmp_path / "users.txt").write_text('"postgres" ""\n')
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(
        f"""[databases]
{dbname} = host={host} port={pg_port} dbname={dbname}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {tmp_path / "users.txt"}
pool_mode = transaction
; PgBouncer refuses startup parameters it does not track, and pgtasks sends search_path in
; its startup packet: ignored here, and pinned on the server instead (see the fixture).
ignore_startup_parameters = search_path
; ONE server connection for every client: two workers and a submitter can only share it
; transaction by transaction (in session mode the second client would wait forever).
default_pool_size = 1
reserve_pool_size = 0
max_client_conn = 200
logfile = {tmp_path / "pgbouncer.log"}
pidfile = {tmp_path / "pgbouncer.pid"}
"""
    )
    proc = subprocess.Popen(
        [*prefix, PGBOUNCER, str(ini)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"postgresql://postgres@127.0.0.1:{port}/{dbname}"
    try:
        asyncio.run(_wait_listening(url, proc, tmp_path / "pgbouncer.log"))
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def _pin_search_path(dsn: str, dbname: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'ALTER DATABASE "{dbname}" SET search_path = {db.SEARCH_PATH}')
    finally:
        await conn.close()


async def _wait_listening(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            text = log.read_text(errors="replace") if log.exists() else ""
            raise AssertionError(f"pgbouncer exited with {proc.returncode}: {text[-2000:]}")
        try:
            conn = await asyncpg.connect(url, statement_cache_size=0, timeout=2)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            await asyncio.sleep(0.1)
            continue
        await conn.close()
        return
    raise AssertionError("pgbouncer did not start listening")


async def test_polling_only_workers_through_transaction_mode_pgbouncer(
    dsn, conn, pgbouncer, tmp_path
):
    before = await backends(conn)
    fleet = Fleet(pgbouncer, tmp_path / "logs")
    common = ["--lease", "4", "--concurrency", "4", "--poll-interval", "0.2"]
    try:
        fleet.start("--pgbouncer", *common)
        fleet.start("--no-listen", "--no-prepared", *common)
        # Submitting through the pooler works too, given a pool without prepared statements.
        pool = await asyncpg.create_pool(
            pgbouncer, min_size=1, max_size=4, statement_cache_size=0, init=db.init_connection
        )
        try:
            async with Client(pool=pool) as client:
                ids = await client.submit_many(
                    "chaos", [{"n": n, "lo": 0.0, "hi": 0.05} for n in range(60)]
                )
                failing = await client.submit("fail", {"message": "behind the pooler"})
                retried = await client.submit("retry_later", {"delay": 0.3})
        finally:
            await pool.close()
        await wait_until(
            dsn,
            "SELECT bool_and(status IN ('DONE', 'FAILED')) FROM pgtasks.tasks",
            timeout=120,
            fleet=fleet,
        )
        rows = await conn.fetch(
            "SELECT id, params, result FROM pgtasks.tasks WHERE id = ANY($1)", ids
        )
        assert sorted(r["result"] for r in rows) == [n * 2 for n in range(60)]
        assert (
            await conn.fetchval("SELECT result FROM pgtasks.tasks WHERE id=$1", retried) == "done"
        )
        errors = await conn.fetch(
            "SELECT attempt, error FROM pgtasks.task_errors WHERE task_id = $1 ORDER BY attempt",
            failing,
        )
        assert [e["attempt"] for e in errors] == [1, 2, 3]  # fail: max_retries=2
        assert all("behind the pooler" in e["error"] for e in errors)
        # Both workers took part, registered and heartbeating through the pooler.
        workers = await conn.fetch("SELECT worker_id, alive FROM pgtasks.workers")
        assert len(workers) == 2 and all(w["alive"] for w in workers)
        claimed_by = await conn.fetchval(
            "SELECT count(DISTINCT worker_id) FROM pgtasks.task_events WHERE to_status='RUNNING'"
        )
        assert claimed_by == 2
        assert all(p.poll() is None for p in fleet.procs)
        # Two workers and a submitter, and not one more server connection than before they
        # started (PgBouncer's single one was opened when the fixture checked it listens).
        assert await backends(conn) <= before
        logs = fleet.tails(10_000)
        assert "prepared statement" not in logs and "claim failed" not in logs, logs
        assert "search_path" not in logs, logs  # pinned on PgBouncer's server connections
    finally:
        fleet.stop_all()


async def backends(conn: asyncpg.Connection) -> int:
    """Server connections to this test's database, other than `conn` itself."""
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
    )
