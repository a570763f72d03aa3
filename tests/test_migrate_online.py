"""`pgtasks migrate` from the previous release while a real worker drains the queue.

The upgrade runs as operators run it, the command line in its own process, against a
database built at the previous release's version and filled with tasks, with a
`pgtasks worker` claiming them all along. A sampler watches the worker's sessions for lock
waits whose blocker is the migrating session: a claim queued behind a delta must never wait
longer than the delta's lock timeout (plus the time the sampler and a busy machine add).

PGTASKS_TEST_ONLINE_TASKS sets the number of tasks (20,000 unless set).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from pgtasks.embedded import EmbeddedPostgres
from pgtasks.migrations import LockPolicy, available, migrate_url
from tests.conftest import ROOT
from tests.fleet import Fleet, wait_until
from tests.migration_probes import pgtasks_command, probe_sql_dir

pytestmark = pytest.mark.slow

TASKS = int(os.environ.get("PGTASKS_TEST_ONLINE_TASKS", "20000"))
PREVIOUS_RELEASE = 20
# The worker these tests run is this release's: it presents lease tokens (sql/0028) and
# registers the code versions it serves (register_worker's arguments since sql/0037), so the
# upgrade under load starts from the first schema it can run on. (Workers of a release
# before 0028 cannot go on after it; docs/operations.md.)
FIRST_THIS_WORKER_RUNS_ON = 37
START = max(PREVIOUS_RELEASE, FIRST_THIS_WORKER_RUNS_ON)
APP = "tests/apps/basic.py"
# What a sampled wait may exceed the lock timeout by: the sampler's own latency and a
# loaded machine's scheduling. A claim queued behind a delta without a timeout would wait
# for the whole blocking transaction, which these tests hold for several timeouts.
SLACK = 1.0

_WAITS_ON_MIGRATE = """
SELECT w.pid, l.waitstart,
       extract(epoch FROM clock_timestamp() - l.waitstart)::float8 AS waited
  FROM pg_locks l JOIN pg_stat_activity w ON w.pid = l.pid
 WHERE NOT l.granted AND l.waitstart IS NOT NULL
   AND w.application_name LIKE 'pgtasks-worker:%'
   AND EXISTS (SELECT 1 FROM pg_stat_activity m
                WHERE m.application_name = 'pgtasks migrate'
                  AND m.pid = ANY (pg_blocking_pids(w.pid)))
"""


@dataclass
class WorkerWaits:
    """The longest each lock wait of a worker session on the migrating one was seen to last."""

    waits: dict[tuple[int, object], float] = field(default_factory=dict)

    @property
    def longest(self) -> float:
        return max(self.waits.values(), default=0.0)

    def summary(self) -> str:
        return f"{len(self.waits)} worker lock waits on migrate, longest {self.longest:.3f}s"

    async def sample(self, url: str) -> None:
        conn = await asyncpg.connect(url)
        try:
            while True:
                for r in await conn.fetch(_WAITS_ON_MIGRATE):
                    key = (r["pid"], r["waitstart"])
                    self.waits[key] = max(self.waits.get(key, 0.0), r["waited"])
                await asyncio.sleep(0.02)
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def sampling(url: str) -> AsyncIterator[WorkerWaits]:
    waits = WorkerWaits()
    task = asyncio.create_task(waits.sample(url))
    try:
        yield waits
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Migrate:
    """`pgtasks migrate` in its own process; its stderr (one line per retry) read live."""

    def __init__(self, url: str, *args: str, sql: Path | None = None) -> None:
        self.argv = pgtasks_command("--database-url", url, "migrate", *args, sql=sql)
        self.retries: list[str] = []
        self.errors: list[str] = []
        self._heard = asyncio.Condition()

    async def __aenter__(self) -> Migrate:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode().rstrip()
            async with self._heard:
                (self.retries if "trying again" in line else self.errors).append(line)
                self._heard.notify_all()

    async def retried(self, times: int) -> None:
        """Until migrate has reported `times` retries (the timeout only bounds a hang)."""
        async with self._heard:
            await asyncio.wait_for(self._heard.wait_for(lambda: len(self.retries) >= times), 120)

    async def finished(self) -> list[str]:
        """Its exit, asserted clean; the files it says it applied."""
        assert self.proc.stdout is not None
        out = await asyncio.wait_for(self.proc.stdout.read(), 300)
        await self.proc.wait()
        await self._reader
        assert self.proc.returncode == 0, self.errors
        return [line.split()[1] for line in out.decode().splitlines() if line.startswith("applied")]

    async def __aexit__(self, *exc: object) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@pytest.fixture
async def previous_release(server: EmbeddedPostgres) -> AsyncIterator[str]:
    """A database at the START schema version, holding TASKS ready tasks."""
    admin = await asyncpg.connect(server.url())
    name = f"online_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE DATABASE {name}")
    url = server.url(name)
    try:
        await migrate_url(url, up_to=START)
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                "SELECT count(*) FROM pgtasks.submit_tasks('noop', array_fill('{}'::jsonb, $1))",
                [TASKS],
            )
        finally:
            await conn.close()
        yield url
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


async def done(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM pgtasks.tasks WHERE status = 'DONE'"))


async def assert_each_task_ran_once(conn: asyncpg.Connection) -> None:
    """Every task DONE on its first attempt, with one claim and one finish in its history."""
    statuses = dict(await conn.fetch("SELECT status::text, count(*) FROM pgtasks.tasks GROUP BY 1"))
    assert statuses == {"DONE": TASKS}, statuses
    assert await conn.fetchval("SELECT max(attempt) FROM pgtasks.tasks") == 1
    twice = await conn.fetchval(
        """SELECT count(*) FROM (
             SELECT task_id FROM pgtasks.task_events
              GROUP BY task_id
             HAVING count(*) FILTER (WHERE to_status = 'RUNNING') <> 1
                 OR count(*) FILTER (WHERE to_status = 'DONE') <> 1) t"""
    )
    assert twice == 0, f"{twice} tasks were claimed or finished other than once"


async def test_migrate_from_the_previous_release_while_a_worker_drains(
    previous_release: str, tmp_path: Path
) -> None:
    url = previous_release
    fleet = Fleet(url, tmp_path / "logs")
    conn = await asyncpg.connect(url)
    try:
        fleet.start(app=APP)
        await wait_until(url, "SELECT count(*) >= 500 FROM pgtasks.tasks WHERE status = 'DONE'",
                         fleet=fleet)  # fmt: skip
        async with sampling(url) as waits, Migrate(url) as migrate:
            before = await done(conn)
            applied = await migrate.finished()
            during = await done(conn) - before
        assert applied == [m.path.stem for m in available()[START:]]
        assert during > 0, "the worker finished no task while migrate ran"
        assert waits.longest <= LockPolicy().timeout + SLACK, waits.summary()
        await wait_until(url, f"SELECT count(*) = {TASKS} FROM pgtasks.tasks WHERE status = 'DONE'",
                         fleet=fleet)  # fmt: skip
        fleet.stop_all()
        await assert_each_task_ran_once(conn)
        print(f"\n{TASKS} tasks, {during} finished while migrate ran; {waits.summary()}")
    finally:
        fleet.stop_all()
        await conn.close()


# Stands for any delta that alters the tasks table: ACCESS EXCLUSIVE, which every claim's
# ROW EXCLUSIVE lock conflicts with, queued behind the long transaction's ACCESS SHARE.
ALTER_TASKS = "ALTER TABLE pgtasks.tasks ADD COLUMN probe text;\n"


async def test_migrate_behind_a_long_transaction_retries_while_the_worker_drains(
    previous_release: str, tmp_path: Path
) -> None:
    url = previous_release
    timeout = 0.5
    sql, (probe,) = probe_sql_dir(tmp_path, ALTER_TASKS)
    # The shipped deltas first: one that waits for older transactions (a DROP INDEX
    # CONCURRENTLY) would otherwise be the one retrying behind the long report.
    await migrate_url(url)
    fleet = Fleet(url, tmp_path / "logs")
    conn = await asyncpg.connect(url)
    report = await asyncpg.connect(url, server_settings={"application_name": "long-report"})
    try:
        await report.execute("BEGIN; SELECT count(*) FROM pgtasks.tasks")
        async with (
            sampling(url) as waits,
            Migrate(url, "--lock-timeout", str(timeout), sql=sql) as migrate,
        ):
            await migrate.retried(1)
            assert probe in migrate.retries[0], migrate.retries[0]
            assert f"pid {await report.fetchval('SELECT pg_backend_pid()')}" in migrate.retries[0]
            # The worker starts while migrate keeps trying: its claims queue behind an
            # attempt for at most the timeout, and flow during the pauses.
            fleet.start(app=APP)
            await wait_until(url, "SELECT count(*) >= 1000 FROM pgtasks.tasks"
                             " WHERE status = 'DONE'", fleet=fleet)  # fmt: skip
            await migrate.retried(len(migrate.retries) + 1)
            drained_while_blocked = await done(conn)
            await report.execute("COMMIT")
            applied = await migrate.finished()
        assert applied == [probe[:-4]]
        assert waits.waits, "no claim ever queued behind the migration: the test saw nothing"
        assert waits.longest <= timeout + SLACK, waits.summary()
        await wait_until(url, f"SELECT count(*) = {TASKS} FROM pgtasks.tasks WHERE status = 'DONE'",
                         fleet=fleet)  # fmt: skip
        fleet.stop_all()
        await assert_each_task_ran_once(conn)
        print(
            f"\n{TASKS} tasks, {drained_while_blocked} finished while migrate was blocked "
            f"({len(migrate.retries)} retries); {waits.summary()}"
        )
    finally:
        fleet.stop_all()
        await report.close()
        await conn.close()
