"""Client: submit (also inside the caller's transaction), get, list with filters, typed errors."""

from __future__ import annotations

import json
from datetime import datetime

import asyncpg
import pytest
from pydantic import BaseModel

from pgtasks import Client, InvalidArgument, PgTasksError, TaskAlreadyFinished, TaskNotFound, db
from pgtasks.client import DOCUMENT_MAX_CHARS, params_documents
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


async def test_submit_sent_again_with_its_idempotency_key_gives_the_same_task(dsn):
    """A producer that resends a submit (its first answer lost) gets one task, also once
    that task has finished, while the key's unique_for window lasts."""
    async with Client(dsn) as c:
        first = await c.submit("noop", {"n": 1}, idempotency_key="order-7", unique_for=3600)
        again = await c.submit("noop", {"n": 1}, idempotency_key="order-7", unique_for=3600)
        assert (first.created, again.created, again) == (True, False, first)
        await c.cancel(first)  # finished: only the window holds the key now
        late = await c.submit("noop", {"n": 1}, idempotency_key="order-7", unique_for=3600)
        assert (late, late.created) == (first, False)
        other = await c.submit("noop", {"n": 1}, idempotency_key="order-8", unique_for=3600)
        assert other.created and other != first
        assert len(await c.list_tasks()) == 2
        with pytest.raises(InvalidArgument, match="pass only one"):
            await c.submit("noop", idempotency_key="a", unique_key="b")


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


# -- submit_many: params as a few JSON documents ------------------------------------------


async def test_submit_many_keeps_input_order_across_documents(dsn):
    """2,500 items travel as three documents (client.DOCUMENT_ITEMS); the ids come back in
    input order, each task holding its own item, models and None included."""
    items: list[dict[str, int] | P | None] = [{"i": i} for i in range(2500)]
    items[1000] = P(a=1000, b=0)
    items[2499] = None
    async with Client(dsn) as c:
        ids = await c.submit_many("noop", items)
        rows = await c.pool.fetch("SELECT id, params FROM pgtasks.tasks ORDER BY id")
    assert ids == [r["id"] for r in rows]
    expected = [{"i": i} for i in range(2500)]
    expected[1000], expected[2499] = {"a": 1000, "b": 0}, {}
    assert [r["params"] for r in rows] == expected


async def test_submit_many_refuses_the_whole_batch_naming_the_bad_item(dsn):
    """One item of 10,000 over max_params_bytes (1 MiB): nothing is inserted, and the
    message names the item by its position in the list, counted from 1."""
    items = [{"i": i} for i in range(10_000)]
    items[7776] = {"blob": "x" * (1 << 20)}
    async with Client(dsn) as c:
        with pytest.raises(InvalidArgument) as info:
            await c.submit_many("noop", items)
        assert info.value.sqlstate == "PT113"
        assert "(item 7777 of the list)" in str(info.value)
        deep: dict[str, object] = {}
        for _ in range(101):
            deep = {"d": deep}
        items[7776] = {"i": 7776}
        items[9999] = deep
        with pytest.raises(InvalidArgument) as info:
            await c.submit_many("noop", items)
        assert info.value.sqlstate == "PT123"
        assert "(item 10000 of the list)" in str(info.value)
        assert await c.pool.fetchval("SELECT count(*) FROM pgtasks.tasks") == 0
        assert await c.pool.fetchval("SELECT count(*) FROM pgtasks.task_events") == 0


def test_params_documents_split_by_count_and_size():
    """Up to DOCUMENT_ITEMS items per document; a document over DOCUMENT_MAX_CHARS goes as
    one document per item, so no jsonb value outgrows its limit for a batch of big items."""
    small = [{"i": i} for i in range(2001)]
    docs = params_documents(small)
    assert [len(json.loads(d)) for d in docs] == [1000, 1000, 1]
    assert [p for d in docs for p in json.loads(d)] == small
    big = [{"i": i, "blob": "x" * (DOCUMENT_MAX_CHARS // 999)} for i in range(1001)]
    docs = params_documents(big)
    assert len(docs) == 1001 and all(len(json.loads(d)) == 1 for d in docs)
    assert [json.loads(d)[0]["i"] for d in docs] == list(range(1001))
    assert params_documents([]) == []


async def test_submit_many_of_big_items_goes_item_by_item(dsn):
    """The documents of a batch of 1,001 items of 17 KB each (over DOCUMENT_MAX_CHARS for
    the first 1,000): stored whole and in order."""
    big = [{"i": i, "blob": "x" * (DOCUMENT_MAX_CHARS // 999)} for i in range(1001)]
    async with Client(dsn) as c:
        ids = await c.submit_many("noop", big)
        rows = await c.pool.fetch(
            "SELECT id, params->'i' AS i, length(params->>'blob') AS n"
            " FROM pgtasks.tasks ORDER BY id"
        )
    assert ids == [r["id"] for r in rows]
    assert [r["i"] for r in rows] == list(range(1001))
    assert {r["n"] for r in rows} == {DOCUMENT_MAX_CHARS // 999}


async def test_submit_many_derives_declared_keys_per_item(dsn):
    """A type that declares its keys (tests.apps.flow.per_customer) still gets them per
    item; the same unique key twice in one batch is one task."""
    import tests.apps.flow  # noqa: F401  (registers per_customer)

    items = [{"customer": 1, "once": "a"}, {"customer": 2}, {"customer": 1, "once": "a"}]
    async with Client(dsn) as c:
        ids = await c.submit_many("per_customer", items)
        rows = await c.pool.fetch(
            "SELECT id, unique_key, concurrency_key, concurrency_limit"
            " FROM pgtasks.tasks ORDER BY id"
        )
    assert ids[0] == ids[2] != ids[1]
    assert [tuple(r) for r in rows] == [
        (ids[0], "a", "customer:1", 1),
        (ids[1], None, "customer:2", 1),
    ]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("unique_for", "1h"),
        ("unique_for", float("nan")),
        ("timeout", True),
        ("soft_timeout", [5]),
        ("delay", 1e300),
    ],
)
async def test_a_bad_duration_is_invalid_argument_naming_it(dsn, option, value):
    """A duration Python cannot read is refused before any SQL, as the typed error the
    rest of bad input raises (a PgTasksError, so `except PgTasksError` keeps working),
    not as the ValueError or OverflowError of float() or timedelta()."""
    async with Client(dsn) as c:
        with pytest.raises(InvalidArgument, match=f"{option} is not a duration"):
            await c.submit("noop", unique_key="k", **{option: value})
        with pytest.raises(InvalidArgument, match="params must be a dict"):
            await c.submit("noop", [1, 2])  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="not both"):
            await c.submit("noop", delay=1, run_at=datetime.now().astimezone())
        with pytest.raises(InvalidArgument, match="unique_for is not a duration"):
            await c.submit_many("noop", [{}], unique_keys=["a"], unique_for="1h")
        assert await c.list_tasks() == []
