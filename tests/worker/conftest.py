"""Fixtures for the worker's services, each tested alone against a real database: a pool,
tasks claimed through the SQL API, and attempts built the way the Worker builds them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from pgtasks import db
from pgtasks.worker.base import WorkerStats
from pgtasks.worker.slots import Attempt, Slots
from pgtasks.worker.writer import TaskWriter

WORKER = "svc-test"


@pytest.fixture
async def pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    p = await db.create_pool(dsn, min_size=1, max_size=2)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
def stats() -> WorkerStats:
    return WorkerStats()


@pytest.fixture
def stopping() -> asyncio.Event:
    return asyncio.Event()


async def submit(conn: asyncpg.Connection, task_type: str, n: int = 1, **kw: Any) -> list[int]:
    ids = []
    for _ in range(n):
        ids.append(await conn.fetchval("SELECT pgtasks.submit_task($1)", task_type))
    return ids


async def claim(
    conn: asyncpg.Connection, n: int, *, worker_id: str = WORKER, lease: float = 60.0
) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT * FROM pgtasks.claim_tasks(worker_id => $1, max_tasks => $2, lease => $3)",
            worker_id,
            n,
            timedelta(seconds=lease),
        )
    )


def attempt(row: asyncpg.Record, pool: asyncpg.Pool, *, is_sync: bool = False) -> Attempt:
    return Attempt.claimed(row, writer=TaskWriter(pool), is_sync=is_sync)


async def status(conn: asyncpg.Connection, task_id: int) -> str:
    return str(await conn.fetchval("SELECT status FROM pgtasks.tasks WHERE id = $1", task_id))


def slots(concurrency: int = 10, threads: int = 10) -> Slots:
    return Slots(concurrency, threads)
