"""End to end: submit (SQL and Python) -> worker -> result, retries, polling, LISTEN wake-ups."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from pgtasks import Client, Worker, db
from pgtasks.migrations import migrate_url
from tests.apps.basic import RUNS_DDL
from tests.conftest import until, wait_for


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    """Run a worker in the background for the duration of the block, then stop it."""
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)


async def status_of(conn: asyncpg.Connection, tid: int) -> str:
    return await conn.fetchval("SELECT status::text FROM pgtasks.tasks WHERE id = $1", tid)


async def idle_and_listening(conn: asyncpg.Connection, worker: Worker) -> None:
    """Wait until the worker's LISTEN connection is up and the claim it asks for on
    connecting is done (the first claim is the start-up one): from here on, only a
    NOTIFY or the poll makes it claim again."""
    await wait_for(
        conn,
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = $1"
        " AND state = 'idle' AND (query ILIKE 'LISTEN%' OR query = 'SELECT 1'))",
        worker.application_name,
    )
    await until(lambda: worker.stats.claim_calls >= 2, what="the claim after LISTEN")


async def test_submit_from_sql_and_python_run_to_done(dsn, conn):
    async with Client(dsn) as client:
        from_py = await client.submit("add", {"a": 2, "b": 3})
        from_sql = await conn.fetchval("""SELECT pgtasks.submit_task('add', '{"a": 40, "b": 2}')""")
        async with running(Worker(dsn, concurrency=2, poll_interval=0.2)):
            await wait_for(conn, "SELECT count(*) = 2 FROM pgtasks.tasks WHERE status = 'DONE'")
        assert (await client.get(from_py)).result == {"sum": 5}
        assert (await client.get(from_sql)).result == {"sum": 42}
        history = [(e.from_status, e.to_status) for e in await client.history(from_sql)]
        assert history == [(None, "PENDING"), ("PENDING", "RUNNING"), ("RUNNING", "DONE")]


async def test_sync_task_runs_in_a_thread(dsn, conn):
    async with Client(dsn) as client:
        tid = await client.submit("sync_add", {"a": 1, "b": 1})
        async with running(Worker(dsn, poll_interval=0.2)):
            await wait_for(conn, "SELECT status = 'DONE' FROM pgtasks.tasks WHERE id = $1", tid)
        assert (await client.get(tid)).result == 2


async def test_invalid_params_fail_without_retry(dsn, conn):
    async with Client(dsn) as client:
        tid = await client.submit("add", {"a": "not a number"})
        async with running(Worker(dsn, poll_interval=0.2)):
            await wait_for(conn, "SELECT status = 'FAILED' FROM pgtasks.tasks WHERE id = $1", tid)
        info = await client.get(tid)
        assert "do not match AddParams" in (info.error or "") and info.attempt == 1


async def test_failing_task_retries_with_backoff_then_fails(dsn, conn):
    async with Client(dsn) as client:
        tid = await conn.fetchval(
            "SELECT pgtasks.submit_task('fail', '{\"message\": \"kaput\"}',"
            " max_retries => 2, backoff_base => interval '1 minute')"
        )
        async with running(Worker(dsn, poll_interval=0.1)) as worker:
            for n in (1, 2):
                # Each retry waits for its backoff (1, then 2 minutes +-20 %) on the database
                # clock: claims pass the task by until the clock has moved past it.
                await wait_for(
                    conn, "SELECT status = 'COMMIT' AND retry_count = $2 FROM pgtasks.tasks"
                    " WHERE id = $1", tid, n,
                )  # fmt: skip
                claims = worker.stats.claim_calls
                await until(lambda c=claims: worker.stats.claim_calls > c + 1, what="2 claims")
                assert await conn.fetchval("SELECT count(*) FROM test_runs") == n
                await conn.execute("SELECT pgtasks.advance_clock(interval '3 minutes')")
            await wait_for(conn, "SELECT status = 'FAILED' FROM pgtasks.tasks WHERE id = $1", tid)
        info = await client.get(tid)
        assert info.attempt == 3 and info.error == "ValueError: kaput"
        errors = await client.errors(tid)
        assert [e["attempt"] for e in errors] == [1, 2, 3]
        assert all("ValueError: kaput" in (e["traceback"] or "") for e in errors)


async def test_fail_once_then_succeed(dsn, conn):
    async with Client(dsn) as client:
        tid = await client.submit("fail_once")
        async with running(Worker(dsn, poll_interval=0.1)):
            await wait_for(conn, "SELECT status = 'DONE' FROM pgtasks.tasks WHERE id = $1", tid)
        info = await client.get(tid)
        assert info.result == "ok" and info.attempt == 2 and info.retries == "1/3"


async def test_polling_only_worker_processes_everything(dsn, conn):
    async with Client(dsn) as client:
        await client.submit_many("recorded", [{} for _ in range(30)])
        async with running(Worker(dsn, listen=False, poll_interval=0.1, concurrency=4)):
            await wait_for(conn, "SELECT count(*) = 30 FROM pgtasks.tasks WHERE status = 'DONE'")
            # a task submitted while the worker idles is found by the poll alone
            late = await client.submit("recorded")
            await wait_for(conn, "SELECT status = 'DONE' FROM pgtasks.tasks WHERE id = $1", late)
        assert await conn.fetchval("SELECT count(DISTINCT task_id) FROM test_runs") == 31


async def test_listen_wakes_an_idle_worker_before_the_poll(dsn, conn):
    """With a 30 s poll interval, only a NOTIFY can start the task within the wait below."""
    async with Client(dsn) as client, running(Worker(dsn, poll_interval=30)) as worker:
        await idle_and_listening(conn, worker)
        for _ in range(3):
            tid = await client.submit("noop")
            await wait_for(
                conn, "SELECT status = 'DONE' FROM pgtasks.tasks WHERE id = $1", tid, timeout=10
            )
        assert worker.stats.succeeded == 3


async def test_future_task_waits_for_run_at(dsn, conn):
    async with Client(dsn) as client, running(Worker(dsn, poll_interval=30)) as worker:
        tid = await client.submit("noop", delay=1.0)
        # The worker has claimed since (at start, and once more when LISTEN connected);
        # no claim before run_at took the task.
        await until(lambda: worker.stats.claim_calls >= 2, what="two claims")
        assert await conn.fetchval(
            "SELECT status = 'PENDING' OR now() >= run_at FROM pgtasks.tasks WHERE id = $1", tid
        )
        # the worker sleeps exactly until run_at rather than waiting out its 30 s poll
        await wait_for(
            conn, "SELECT status = 'DONE' FROM pgtasks.tasks WHERE id = $1", tid, timeout=10
        )
        started = await conn.fetchval(
            "SELECT e.at >= t.run_at FROM pgtasks.task_events e"
            " JOIN pgtasks.tasks t ON t.id = e.task_id"
            " WHERE e.task_id = $1 AND e.to_status = 'RUNNING'",
            tid,
        )
        assert started


async def test_worker_only_claims_its_queues_and_types(dsn, conn):
    async with Client(dsn) as client:
        other_queue = await client.submit("noop", queue="elsewhere")
        unknown_type = await client.submit("nobody_knows_this_type")
        mine = await client.submit("noop")
        async with running(Worker(dsn, queues=["default"], poll_interval=0.1)) as worker:
            await wait_for(conn, "SELECT status = 'DONE' FROM pgtasks.tasks WHERE id = $1", mine)
            # The claim that took `mine` saw the other two as well; one more claim after it.
            claims = worker.stats.claim_calls
            await until(lambda: worker.stats.claim_calls > claims, what="another claim")
        assert await status_of(conn, other_queue) == "PENDING"
        assert await status_of(conn, unknown_type) == "PENDING"


async def test_graceful_stop_hands_back_unfinished_tasks(dsn, conn):
    async with Client(dsn) as client:
        tid = await client.submit("sleep", {"seconds": 30})
        worker = Worker(dsn, poll_interval=0.1, shutdown_grace=0.2)
        task = asyncio.create_task(worker.run())
        await wait_for(conn, "SELECT status = 'RUNNING' FROM pgtasks.tasks WHERE id = $1", tid)
        worker.stop()
        await asyncio.wait_for(task, 30)
        row = await conn.fetchrow(
            "SELECT status::text, retry_count, worker_id FROM pgtasks.tasks WHERE id = $1", tid
        )
        assert tuple(row) == ("COMMIT", 0, None)  # handed back, no retry used
        assert worker.stats.handed_back == 1
        assert await conn.fetchval("SELECT count(*) FROM pgtasks.worker_registry") == 0


async def test_worker_without_registered_types_is_a_clear_error(dsn):
    from pgtasks import PgTasksError, Registry

    with pytest.raises(PgTasksError, match="no task types are registered"):
        await Worker(dsn, registry=Registry()).run()


async def test_worker_prunes_finished_tasks_past_retention(dsn, conn):
    from datetime import timedelta

    async with Client(dsn) as client:
        await client.submit_many("noop", [{} for _ in range(2500)])
        async with running(Worker(dsn, concurrency=50, poll_interval=0.1)):
            await wait_for(conn, "SELECT count(*) = 2500 FROM pgtasks.tasks WHERE status = 'DONE'")
        keep = await client.submit("noop")  # runs after the clock moves: 8 days younger
        await conn.execute("SELECT pgtasks.advance_clock(interval '8 days')")
        # more than one prune batch (1,000) in one round, shortly after start
        worker = Worker(dsn, poll_interval=0.1, retention=timedelta(days=7), rescue_interval=0.2)
        async with running(worker):
            await wait_for(conn, "SELECT count(*) = 1 FROM pgtasks.tasks")
        assert [r[0] for r in await conn.fetch("SELECT id FROM pgtasks.tasks")] == [keep]


async def test_a_worker_started_before_migrate_waits_for_the_lease_token_schema(server, caplog):
    """A worker of this release presents lease tokens (sql/0028). Started against an older
    schema it claims nothing (each claim would come back without a token, the task fail
    here and spend a retry when rescued) until `pgtasks migrate` has run, then works."""
    admin = await asyncpg.connect(server.url())
    name = f"tokens_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE DATABASE {name}")
    url = server.url(name)
    try:
        await migrate_url(url, up_to=24)
        raw = await asyncpg.connect(url)  # the test tasks record their runs in public
        await raw.execute(RUNS_DDL)
        await raw.close()
        conn = await db.connect(url)
        try:
            tid = await conn.fetchval("""SELECT pgtasks.submit_task('add', '{"a": 1, "b": 2}')""")
            with caplog.at_level(logging.WARNING, logger="pgtasks.worker"):
                async with running(Worker(url, poll_interval=0.2)) as w:
                    await until(lambda: "predates this worker" in caplog.text, what="the warning")
                    assert not w.ready.is_set() and await status_of(conn, tid) == "PENDING"
                    await migrate_url(url)
                    await wait_for(
                        conn, "SELECT status = 'DONE' FROM pgtasks.tasks WHERE id = $1", tid
                    )
            row = await conn.fetchrow(
                "SELECT attempt, retry_count FROM pgtasks.tasks WHERE id = $1", tid
            )
            assert tuple(row) == (1, 0)
        finally:
            await conn.close()
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()
