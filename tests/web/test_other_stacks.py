"""Submitting from SQLAlchemy's transactions and from synchronous code."""

from __future__ import annotations

import threading

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from pgtasks import Client, PgTasksError, SyncClient, TaskNotFound


async def count(dsn: str) -> int:
    c = await asyncpg.connect(dsn)
    try:
        return await c.fetchval("SELECT count(*) FROM pgtasks.tasks")
    finally:
        await c.close()


async def test_sqlalchemy_session_rollback_leaves_no_task_commit_leaves_one(dsn):
    engine = create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://"))
    try:
        async with Client(dsn) as client:
            async with AsyncSession(engine) as session:
                task_id = await client.submit("noop", {"n": 1}, connection=session)
                assert task_id > 0
                await session.rollback()
            assert await count(dsn) == 0
            async with AsyncSession(engine) as session, session.begin():
                await session.execute(text("SELECT 1"))
                kept = await client.submit("noop", {"n": 2}, connection=session)
            assert await count(dsn) == 1
            assert (await client.detail(kept)).params == {"n": 2}
            # An AsyncConnection too, and submit_many.
            async with engine.connect() as conn:
                await client.submit_many("noop", [{}, {}], connection=conn)
                await conn.rollback()
            async with engine.begin() as conn:
                await client.submit_many("noop", [{"i": 1}, {"i": 2}], connection=conn)
            assert await count(dsn) == 3
            with pytest.raises(PgTasksError, match="connection must be"):
                await client.submit("noop", connection=object())
    finally:
        await engine.dispose()


def test_sync_client_from_a_plain_thread(dsn):
    out: dict[str, object] = {}

    def work() -> None:
        with SyncClient(dsn) as tasks:
            task_id = tasks.submit("noop", {"x": 1}, queue="sync")
            out["status"] = tasks.get(task_id).status
            out["cancel"] = tasks.cancel(task_id)
            try:
                tasks.get(10**9)
            except TaskNotFound as exc:
                out["missing"] = exc.sqlstate

    t = threading.Thread(target=work)
    t.start()
    t.join(60)
    assert out == {"status": "PENDING", "cancel": "PENDING", "missing": "PT003"}


def test_sync_client_waits_for_a_result(dsn):
    import asyncio

    from pgtasks import Worker
    from tests.apps import basic  # noqa: F401  (registers add)

    with SyncClient(dsn) as tasks:
        task_id = tasks.submit("add", {"a": 2, "b": 3})
        ready = threading.Event()

        def run_worker() -> None:
            async def go() -> None:
                w = Worker(dsn, poll_interval=0.1)
                run = asyncio.create_task(w.run())
                await asyncio.to_thread(ready.wait, 60)
                w.stop()
                await run

            asyncio.run(go())

        t = threading.Thread(target=run_worker)
        t.start()
        try:
            assert tasks.wait(task_id, timeout=60) == {"sum": 5}
        finally:
            ready.set()
            t.join(60)
