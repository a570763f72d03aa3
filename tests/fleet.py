"""Real worker processes and private servers for the kill, restart and chaos tests.

Workers log to files, not pipes: a pipe nobody reads fills up and blocks a chatty worker,
which would look exactly like the hangs these tests hunt for. On failure the tests print
the log tails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg

from pgtasks import Worker, db
from pgtasks.embedded import EmbeddedPostgres
from pgtasks.migrations import migrate_url
from tests.apps.basic import RUNS_DDL

#: The start_worker fixture (tests/conftest.py): starts an in-process Worker.
StartWorker = Callable[..., Awaitable[Worker]]

ROOT = Path(__file__).resolve().parent.parent
APP = "tests/apps/reliability.py"


class Fleet:
    """`pgtasks worker` processes against one database, each logging to its own file."""

    def __init__(self, dsn: str, log_dir: Path) -> None:
        self.dsn = dsn
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, *args: str, app: str = APP) -> subprocess.Popen[bytes]:
        n = len(self.procs)
        log = self.log_dir / f"worker-{n}.log"
        cmd = [sys.executable, "-m", "pgtasks.cli", "--database-url", self.dsn, "worker",
               "--app", app, *args]  # fmt: skip
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        self.procs.append(proc)
        self.logs[proc.pid] = log
        return proc

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.procs if p.poll() is None]

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL: no drain, no hand-back, no unregister. Exactly a crash."""
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(30)

    def tails(self, lines: int = 15) -> str:
        out = []
        for pid, path in self.logs.items():
            text = path.read_text(errors="replace").splitlines() if path.exists() else []
            out.append(f"--- worker pid {pid} ({path.name}) ---")
            out.extend(text[-lines:])
        return "\n".join(out)


async def psql(url: str) -> asyncpg.Connection:
    """A test's own session, as psql would open it: the database's default search_path (so
    the tests' tables in public resolve), with pgtasks' JSON codecs. pgtasks' connections
    pin theirs (pgtasks.db.SEARCH_PATH); a test stands in for an operator, not for them."""
    conn = await asyncpg.connect(url)
    await db.init_connection(conn)
    return conn


async def start_private_server(root: Path) -> tuple[EmbeddedPostgres, str]:
    """A server of the test's own, migrated, with the test_runs table: safe to restart."""
    server = EmbeddedPostgres(root)
    url = await asyncio.to_thread(server.start)
    await migrate_url(url)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(RUNS_DDL)
    finally:
        await conn.close()
    return server, url


@contextlib.asynccontextmanager
async def fresh_conn(url: str, *, timeout: float = 60) -> AsyncIterator[asyncpg.Connection]:
    """A new connection, retried while the server is (re)starting."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            conn = await psql(url)
            break
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.2)
    try:
        yield conn
    finally:
        await conn.close()


async def wait_until(
    url: str, query: str, *args: object, timeout: float = 90, fleet: Fleet | None = None
) -> None:
    """Poll a boolean query on fresh connections (they survive server restarts).

    The timeout only keeps a broken test from hanging; it is never a speed assertion.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        with contextlib.suppress(OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError):
            async with fresh_conn(url, timeout=5) as conn:
                while True:
                    if await conn.fetchval(query, *args):
                        return
                    if loop.time() > deadline:
                        break
                    await asyncio.sleep(0.1)
        if loop.time() > deadline:
            detail = f"\n{fleet.tails()}" if fleet is not None else ""
            raise AssertionError(f"not reached within {timeout}s: {query}{detail}")
        await asyncio.sleep(0.2)
