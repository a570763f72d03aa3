"""Client: submit (also inside the caller's transaction), get, list with filters, typed errors."""

from __future__ import annotations

import asyncpg
import pytest
from pydantic import BaseModel

from pgtasks import Client, InvalidArgument, PgTasksError, TaskAlreadyFinished, TaskNotFound, db
from tests.apps.basic import Add


class P(BaseModel):
    a: int
    b: int


async def test_submit_accepts_names_classes_and_models(dsn):
    async with Client(dsn) as c:
        t1 = await c.submit(Add, P(a=1, b=2), priority=3, max_retries=0, timeout=5)
        info = await c.get(t1)
        assert (info.task_type, info.priority, info.retries, info.status) == (
            "add",
            3,
            "0/0",
            "PENDING",
        )
        ids = await c.submit_many("noop", [{}, {"x": 1}], queue="q")
        assert len(ids) == 2
        assert [(await c.get(i)).queue for i in ids] == ["q", "q"]


async def test_submit_inside_callers_transaction(dsn):
    async with Client(dsn) as c:
        conn = await db.connect(dsn)
        try:
            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    await c.submit("noop", connection=conn)
                    raise RuntimeError("rollback")
            async with conn.transaction():
                kept = await c.submit("noop", connection=conn)
        finally:
            await conn.close()
        assert [t.id for t in await c.list_tasks()] == [kept]


async def test_bad_input_raises_typed_error_and_inserts_nothing(dsn):
    async with Client(dsn) as c:
        with pytest.raises(InvalidArgument) as info:
            await c.submit("noop", max_retries=-1)
        assert info.value.sqlstate == "PT106" and "max_retries" in str(info.value)
        with pytest.raises(PgTasksError, match="dict or a pydantic model"):
            await c.submit("noop", [1, 2])  # type: ignore[arg-type]
        with pytest.raises(PgTasksError, match="not a registered task"):
            await c.submit(object())
        assert await c.list_tasks() == []


async def test_list_filters_and_pagination(dsn):
    async with Client(dsn) as c:
        ids = await c.submit_many("noop", [{} for _ in range(7)])
        other = await c.submit("add", {"a": 1, "b": 1}, queue="math")
        await c.cancel(ids[0])
        assert [t.id for t in await c.list_tasks(queue="math")] == [other]
        assert [t.id for t in await c.list_tasks(task_type="add")] == [other]
        assert [t.id for t in await c.list_tasks(status="cancelled")] == [ids[0]]
        page1 = await c.list_tasks(limit=3)
        page2 = await c.list_tasks(limit=3, before_id=page1[-1].id)
        assert [t.id for t in page1 + page2] == sorted([*ids, other], reverse=True)[:6]
        with pytest.raises(PgTasksError, match="unknown status"):
            await c.list_tasks(status="bogus")


async def test_cancel_and_retry_errors_are_typed(dsn):
    async with Client(dsn) as c:
        tid = await c.submit("noop")
        assert await c.cancel(tid) == "PENDING"
        with pytest.raises(TaskAlreadyFinished):
            await c.cancel(tid)
        await c.retry(tid)
        assert (await c.get(tid)).status == "PENDING"
        with pytest.raises(TaskNotFound):
            await c.get(999_999)
        with pytest.raises(TaskNotFound):
            await c.cancel(999_999)


async def test_raw_sql_errors_keep_their_sqlstate(dsn):
    conn = await asyncpg.connect(dsn)
    try:
        with pytest.raises(asyncpg.PostgresError) as info:
            await conn.execute("SELECT pgtasks.submit_task('')")
        assert info.value.sqlstate == "PT101"
    finally:
        await conn.close()


async def test_the_python_status_list_is_the_database_enum(dsn):
    from pgtasks import queries
    from pgtasks.client import STATUSES

    async with Client(dsn) as c:
        assert tuple(await c.pool.fetchval(queries.STATUSES)) == STATUSES
