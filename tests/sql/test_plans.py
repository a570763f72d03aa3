"""The hot paths stay on their indexes as history grows: checked on the real functions.

auto_explain logs the plan of every statement the functions run; the test reads those
plans from the server's notices. No timing is asserted, only the shape of the plans.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import asyncpg
import psycopg
import pytest

from pgtasks import Client, db
from pgtasks.embedded import EmbeddedPostgres
from pgtasks.migrations import migrate_url
from pgtasks.queries import DASH_QUEUES, dash_task_list
from tests.apps.basic import RUNS_DDL

# big_template builds 26,000 tasks through the real API once; million_tasks takes seconds.
pytestmark = pytest.mark.slow


async def nested_plans(conn: asyncpg.Connection, sql: str, *args: object) -> str:
    notices: list[str] = []

    def on_log(_c: object, msg: asyncpg.PostgresLogMessage) -> None:
        notices.append(str(msg.message) + "\n" + str(getattr(msg, "detail", "") or ""))

    conn.add_log_listener(on_log)
    try:
        await conn.execute(
            "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0;"
            "SET auto_explain.log_nested_statements = on; SET auto_explain.log_level = notice;"
            "SET client_min_messages = notice"
        )
        await conn.fetch(sql, *args)
        await conn.execute("SET auto_explain.log_min_duration = -1")
    finally:
        conn.remove_log_listener(on_log)
    return "\n".join(notices)


async def fill_big_table(conn: asyncpg.Connection) -> None:
    """24,000 finished tasks, 1,000 scheduled for later and 1,000 ready, in two queues."""
    await conn.execute(
        """
        INSERT INTO pgtasks.tasks (task_type, queue) SELECT 't', 'q' || (i % 2)
          FROM generate_series(1, 26000) i;
        UPDATE pgtasks.tasks SET run_at = now() + interval '1 day' WHERE id % 26 = 1;
        """
    )
    # finish most of them through the real API, in big batches
    for _ in range(24):
        rows = await conn.fetch(
            "SELECT id, lease_token FROM pgtasks.claim_tasks('setup', max_tasks => 1000)"
        )
        await conn.fetch(
            "SELECT * FROM pgtasks.finish_tasks($1, $2, $3::jsonb[])",
            [r[0] for r in rows], [r[1] for r in rows], [None] * len(rows),
        )  # fmt: skip
    await conn.execute("ANALYZE pgtasks.tasks")
    counts = dict(await conn.fetch("SELECT status::text, count(*) FROM pgtasks.tasks GROUP BY 1"))
    assert counts == {"DONE": 24_000, "PENDING": 2_000}


@pytest.fixture(scope="module")
def big_template() -> Iterator[str]:
    """A migrated database holding big_table's tasks, built once for the module: each test
    that asks for big_table gets a copy (CREATE DATABASE ... TEMPLATE copies the rows and
    their statistics), a fraction of a second instead of seconds of inserts and claims."""
    server = session_server()
    name = f"plans_big_{uuid.uuid4().hex[:8]}"

    async def make() -> None:
        admin = await asyncpg.connect(server.url())
        try:
            await admin.execute(f"CREATE DATABASE {name}")
        finally:
            await admin.close()
        await migrate_url(server.url(name))
        c = await asyncpg.connect(server.url(name))
        try:
            await c.execute(RUNS_DDL)
            await fill_big_table(c)
        finally:
            await c.close()

    on_thread(make)
    try:
        yield name
    finally:
        on_thread(drop_database, server.url(), name)


def session_server() -> EmbeddedPostgres:
    """The session's server (the `server` fixture is per test)."""
    from tests import conftest

    assert conftest._server is not None
    return conftest._server


def on_thread(fn: Callable[..., Coroutine[Any, Any, None]], *args: object) -> None:
    """Run a coroutine on a loop of its own: a test's loop may already be running."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, fn(*args)).result()


async def drop_database(url: str, name: str) -> None:
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
def dsn(request: pytest.FixtureRequest, postgresql: psycopg.Connection) -> Iterator[str]:
    """The test's database (tests/conftest.py); for a test that asks for big_table, a fresh
    copy of big_template instead."""
    info = postgresql.info
    url = f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}"
    if "big_table" not in request.fixturenames:
        yield url
        return
    server = session_server()
    template: str = request.getfixturevalue("big_template")
    name = f"plans_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server.url(), autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    try:
        yield server.url(name)
    finally:
        with psycopg.connect(server.url(), autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def big_table(dsn: str) -> None:
    """24,000 finished tasks, 1,000 scheduled for later and 1,000 ready, in two queues: the
    test's database is a copy of big_template."""


CLAIM_100 = "SELECT id, lease_token FROM pgtasks.claim_tasks('w', max_tasks => 100)"


@pytest.mark.parametrize("queues", [None, ["q0"], ["q0", "q1"]])
async def test_claim_walks_an_index_without_sorting(conn, big_table, queues):
    plans = await nested_plans(conn, "SELECT * FROM pgtasks.claim_tasks('w', $1, 10)", queues)
    pick = next(p for p in plans.split("duration:") if "FOR NO KEY UPDATE SKIP LOCKED" in p)
    assert "Index Scan using tasks_claimable" in pick, pick
    assert "Sort Key" not in pick, pick
    assert "Seq Scan on tasks" not in pick, pick


async def test_batched_finish_and_heartbeat_look_tasks_up_by_id(conn, big_table):
    rows = await conn.fetch(CLAIM_100)
    assert len(rows) == 100
    ids, held = [r[0] for r in rows], [r[1] for r in rows]
    for sql, args in (
        ("SELECT * FROM pgtasks.heartbeat('w', $1, $2)", (ids, held)),
        ("SELECT * FROM pgtasks.finish_tasks($1, $2, $3::jsonb[])", (ids, held, [None] * 100)),
    ):
        plans = await nested_plans(conn, sql, *args)
        update = next(p for p in plans.split("duration:") if "Update on tasks t" in p)
        assert "tasks_pkey" in update, update
        assert "Seq Scan on tasks" not in update, update


async def test_next_run_at_is_one_probe(conn, big_table):
    plans = await nested_plans(conn, "SELECT pgtasks.next_run_at(ARRAY['q0'])")
    probe = next(p for p in plans.split("duration:") if "min(t.run_at)" in p)
    assert "tasks_next_run_at" in probe, probe
    assert "Seq Scan on tasks" not in probe and "Bitmap" not in probe, probe


@pytest.mark.parametrize("queues", [None, ["q0"], ["q0", "q1"]])
async def test_finish_and_claim_is_one_update_on_the_same_indexes(conn, big_table, queues):
    """One round trip and, since sql/0020, one UPDATE for the finishes and the claims: the
    pick walks tasks_claimable like claim_tasks, the update finds both kinds of rows by id."""
    rows = await conn.fetch(CLAIM_100)
    plans = await nested_plans(
        conn,
        "SELECT * FROM pgtasks.finish_and_claim('w', $1, $2, $3::jsonb[], 10, $4)",
        [r[0] for r in rows], [r[1] for r in rows], [None] * len(rows), queues,
    )  # fmt: skip
    updates = [p for p in plans.split("duration:") if "Update on tasks t" in p]
    assert len(updates) == 1, plans
    assert "tasks_pkey" in updates[0] and "Seq Scan on tasks" not in updates[0], updates[0]
    pick = next(p for p in plans.split("duration:") if "FOR NO KEY UPDATE SKIP LOCKED" in p)
    assert "Index Scan using tasks_claimable" in pick, pick
    assert "Sort Key" not in pick and "Seq Scan on tasks" not in pick, pick
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.tasks WHERE status = 'RUNNING'") == 10


async def test_finish_and_claim_keeps_two_statements_for_dependents(conn, big_table):
    """A finished task with dependents releases them in its statement's history trigger;
    the claim must be a later statement to take them in the same call (sql/0020)."""
    (parent, held) = await conn.fetchrow(
        "SELECT id, lease_token FROM pgtasks.claim_tasks('w', max_tasks => 1)"
    )
    child = await conn.fetchval(
        "SELECT pgtasks.submit_task('t', queue => 'q0', priority => 9,"
        " depends_on => ARRAY[$1::bigint])",
        parent,
    )
    plans = await nested_plans(
        conn,
        "SELECT * FROM pgtasks.finish_and_claim('w', ARRAY[$1::bigint], ARRAY[$2],"
        " ARRAY[NULL::jsonb], 1)",
        parent, held,
    )  # fmt: skip
    assert len([p for p in plans.split("duration:") if "Update on tasks t" in p]) >= 2, plans
    status = await conn.fetchval("SELECT status::text FROM pgtasks.tasks WHERE id = $1", child)
    assert status == "RUNNING"


async def test_claim_returns_rows_sorted_not_joined_back(conn, big_table):
    """The claimed rows come back in claim order by a sort of the batch, not by a nested
    loop that compares every claimed row with every picked id (sql/0008)."""
    plans = await nested_plans(conn, "SELECT * FROM pgtasks.claim_tasks('w', max_tasks => 100)")
    ret = next(p for p in plans.split("duration:") if "WITH claimed AS" in p)
    assert "Sort Key" in ret and "Join Filter" not in ret, ret
    assert "tasks_pkey" in ret and "Seq Scan on tasks" not in ret, ret


async def test_history_joins_its_transition_tables_by_hash(dsn, conn, big_table):
    """record_status_changes writes one history row per status change by joining new_rows and
    old_rows; as a nested loop that was 100 x 100 comparisons per claim of 100 (sql/0013).
    PL/pgSQL plans the statement once per session, with the row counts of its first call:
    a worker's first claim of one task used to fix a nested loop for the session."""
    fresh = await asyncpg.connect(dsn)
    try:
        await fresh.fetch("SELECT * FROM pgtasks.claim_tasks('w', max_tasks => 1)")
        plans = await nested_plans(
            fresh, "SELECT * FROM pgtasks.claim_tasks('w', max_tasks => 100)"
        )
    finally:
        await fresh.close()
    history = next(p for p in plans.split("duration:") if "INSERT INTO pgtasks.task_events" in p)
    assert "Hash Join" in history and "Nested Loop" not in history, history


async def test_rescue_and_max_running_count_walk_tasks_lease(conn, big_table):
    """One index of running tasks (queue, lease_expires_at) serves rescue and max_running
    (sql/0008 replaced 0005's tasks_running_queue)."""
    rows = await conn.fetch("SELECT id FROM pgtasks.claim_tasks('w', max_tasks => 200)")
    await conn.execute(
        "UPDATE pgtasks.tasks SET lease_expires_at = now() - interval '1 second'"
        " WHERE id = ANY($1)",
        [r[0] for r in rows[:5]],
    )
    await conn.execute("ANALYZE pgtasks.tasks")
    plans = await nested_plans(conn, "SELECT pgtasks.rescue_expired()")
    lock = next(p for p in plans.split("duration:") if "lease_expires_at < pgtasks.now()" in p)
    assert "tasks_lease" in lock and "Seq Scan on tasks" not in lock, lock


async def test_wake_up_head_check_is_one_probe(conn, big_table):
    plans = await nested_plans(conn, "SELECT pgtasks.submit_task('t', queue => 'q0')")
    probe = next(p for p in plans.split("duration:") if "head.run_at <= now_" in p)
    assert "Scan using tasks_claimable_queue" in probe and "Index Cond" in probe, probe
    assert "Seq Scan on tasks" not in probe and "Sort Key" not in probe, probe


async def explain_generic(conn: asyncpg.Connection, sql: str, types: str) -> str:
    """The plan a prepared statement gets once PostgreSQL settles on its generic plan."""
    await conn.execute(
        f"SET plan_cache_mode = force_generic_plan; PREPARE generic({types}) AS {sql}"
    )
    try:
        args = ", ".join("NULL" for _ in types.split(","))
        return "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN EXECUTE generic({args})"))
    finally:
        await conn.execute("DEALLOCATE generic; RESET plan_cache_mode")


@pytest.fixture
async def waiting_tasks(conn, big_table):
    """20 WAITING tasks in q1, on a parent in q0, next to big_table's 26,000 others."""
    parent = await conn.fetchval("SELECT pgtasks.submit_task('t', queue => 'q0')")
    for _ in range(20):
        await conn.fetchval(
            "SELECT pgtasks.submit_task('t', queue => 'q1', depends_on => ARRAY[$1::bigint])",
            parent,
        )
    await conn.execute("ANALYZE pgtasks.tasks")


def waiting_list(queue: str | None) -> tuple[str, list[object]]:
    return dash_task_list(
        status="WAITING", queue=queue, task_type=None, search=None, after_id=None,
        oldest_ready=False, limit=51,
    )  # fmt: skip


async def test_dashboard_finds_and_counts_waiting_tasks_by_index(conn, waiting_tasks):
    """The tasks page's status=WAITING filter (alone and with a queue) and the WAITING counts
    on the queue cards read 0018's tasks_waiting instead of walking the 26,000 other tasks."""
    for queue in (None, "q1"):
        sql, args = waiting_list(queue)
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql, *args))
        assert "tasks_waiting" in plan and "tasks_pkey" not in plan, plan
        assert "Seq Scan on tasks" not in plan, plan
    plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + DASH_QUEUES))
    assert "Index Only Scan using tasks_waiting" in plan, plan
    assert "Seq Scan on tasks" not in plan, plan
    cards = {r["queue"]: r["waiting_on_parents"] for r in await conn.fetch(DASH_QUEUES)}
    assert cards == {"q0": 0, "q1": 20}


async def test_the_task_list_is_planned_for_its_values_every_time(dsn, conn, waiting_tasks):
    """A generic plan of the task list cannot use a partial index (here: the WAITING filter
    walks the primary key) and guesses a short walk for any value; from a prepared
    statement's sixth run PostgreSQL may keep it. Client.browse plans every call for its
    values: on one pooled connection, eight lists of a rare type and eight of WAITING
    tasks never run a generic plan."""
    sql, _ = waiting_list(None)
    plan = await explain_generic(conn, sql, "text, int")
    assert "tasks_waiting" not in plan and "tasks_pkey" in plan, plan

    await conn.execute("UPDATE pgtasks.tasks SET task_type = 'rare' WHERE id <= 3")
    await conn.execute("ANALYZE pgtasks.tasks")
    pool = await db.create_pool(dsn, min_size=1, max_size=1)
    try:
        async with Client(pool=pool) as c:
            for _ in range(8):
                assert len(await c.browse(task_type="rare")) == 3
                assert len(await c.browse(status="WAITING")) == 20
            async with pool.acquire() as own:
                plans = await own.fetch(
                    "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
                    " WHERE statement LIKE '%ORDER BY id DESC LIMIT $2::int'"
                )
    finally:
        await pool.close()
    assert len(plans) == 2 and all(p["custom_plans"] == 8 for p in plans), plans
    assert all(p["generic_plans"] == 0 for p in plans), plans


@pytest.fixture
async def million_tasks(conn):
    """1,000,000 finished tasks, half of them keyed (100,000 keys, five tasks each, over
    three types), each with its history row; then 50 keyed tasks claimed through the real
    API. The bulk rows skip the triggers (session_replication_role), which only record
    history, and name every column a default would compute: about 12 s instead of 30."""
    await conn.execute(
        """
        SET session_replication_role = replica;
        INSERT INTO pgtasks.tasks (task_type, queue, priority, max_retries, timeout,
                                   backoff_base, status, attempt, started_at, finished_at,
                                   unique_key)
        SELECT 't' || (i % 3), 'q' || (i % 2), 0, 3, interval '1 hour', interval '1 second',
               'DONE', 1, now(), now(), CASE WHEN i % 2 = 0 THEN 'key:' || (i % 100000) END
          FROM generate_series(1, 1000000) i;
        INSERT INTO pgtasks.task_events (task_id, attempt, from_status, to_status, db_user, at)
        SELECT id, 1, 'RUNNING', 'DONE', 'bulk', now() FROM pgtasks.tasks;
        RESET session_replication_role;
        SELECT pgtasks.submit_or_get('t1', queue => 'q0', unique_key => 'live:' || i)
          FROM generate_series(1, 50) i;
        SELECT count(*) FROM pgtasks.claim_tasks('w', max_tasks => 50);
        ANALYZE pgtasks.tasks;
        ANALYZE pgtasks.task_events;
        """
    )


async def test_find_and_active_tasks_stay_on_their_indexes(conn, million_tasks):
    """Client.find, the API's page of a key and pgtasks.active_tasks with a million tasks:
    the newest task of a key is one probe of tasks_by_unique_key (with or without a type,
    for the values of the call and in the generic plan a prepared statement settles on),
    never a walk of the table or of its primary key; the active tasks come from tasks_lease
    and each attempt's start from task_events_task."""
    from pgtasks.queries import ACTIVE_TASKS, FIND_TASK, KEY_TASK_PAGE

    async def explain(sql: str, *args: object) -> str:
        return "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql, *args))

    page_args = (None, None, None, False, 50, 0)
    plans = {
        "find": await explain(FIND_TASK, "key:42", None),
        "find of a type": await explain(FIND_TASK, "key:42", "t1"),
        "find, generic": await explain_generic(conn, FIND_TASK, "text, text"),
        "page": await explain(KEY_TASK_PAGE, *page_args, "key:42"),
        "page, generic": await explain_generic(
            conn, KEY_TASK_PAGE, "pgtasks.status, text, text, boolean, int, int, text"
        ),
    }
    for what, plan in plans.items():
        assert "tasks_by_unique_key" in plan, (what, plan)
        assert "Seq Scan on tasks" not in plan and "tasks_pkey" not in plan, (what, plan)
        if what.startswith("find"):  # newest first by the index itself: no sort
            assert "Index Scan Backward using tasks_by_unique_key" in plan, (what, plan)
            assert "Sort" not in plan, (what, plan)
    assert await conn.fetchval(
        f"SELECT id FROM ({FIND_TASK}) f", "key:42", "t0"
    ) == await conn.fetchval(
        "SELECT max(id) FROM pgtasks.tasks WHERE unique_key = 'key:42' AND task_type = 't0'"
    )

    active = await explain(ACTIVE_TASKS, None, None, 1000)
    assert "tasks_lease" in active and "task_events_task" in active, active
    assert "Seq Scan on tasks" not in active and "Seq Scan on task_events" not in active, active
    assert len(await conn.fetch(ACTIVE_TASKS, None, None, 1000)) == 50


@pytest.fixture
async def other_types_backlog(conn):
    """20,000 ready tasks of type 'other' and three of type 'mine', in queue 'q', with no
    ANALYZE since the insert: a queue table's statistics are stale more often than not."""
    await conn.execute(
        """
        INSERT INTO pgtasks.tasks (task_type, queue)
          SELECT 'other', 'q' FROM generate_series(1, 20000);
        INSERT INTO pgtasks.tasks (task_type, queue) SELECT 'mine', 'q' FROM generate_series(1, 3);
        """
    )


async def test_claim_of_one_type_reads_only_its_rows(conn, other_types_backlog):
    """A worker of one type walks tasks_claimable_type: it reads a few pages, not every ready
    row of the other types ahead of its own (that walk read about 430 pages per claim with
    20,000 ready, 4,270 with 200,000). Six calls per form of the queue list (every queue,
    one, several), so that the session's cached plan for each statement is the generic one
    too."""
    await conn.execute(
        "LOAD 'auto_explain'; SET auto_explain.log_analyze = on; SET auto_explain.log_buffers = on"
    )
    sql = "SELECT id FROM pgtasks.claim_tasks('w', $1, 1, task_types => ARRAY['mine'])"
    for queues in (None, ["q"], ["q", "p"]):
        for _ in range(6):
            await claim_one_type_once(conn, sql, queues)


async def claim_one_type_once(conn: asyncpg.Connection, sql: str, queues: list[str] | None) -> None:
    """One claim in a transaction rolled back after it, its pick's plan checked."""
    tx = conn.transaction()
    await tx.start()
    try:
        plans = await nested_plans(conn, sql, queues)
        running = await conn.fetchval(
            "SELECT count(*) FROM pgtasks.tasks WHERE status = 'RUNNING' AND task_type = 'mine'"
        )
    finally:
        await tx.rollback()
    assert running == 1
    pick = next(p for p in plans.split("duration:") if "FOR NO KEY UPDATE SKIP LOCKED" in p)
    assert "Index Scan using tasks_claimable_type" in pick, pick
    assert "Rows Removed by Filter" not in pick and "Sort Key" not in pick, pick
    hits = [int(n) for n in re.findall(r"shared hit=(\d+)", pick)]
    assert hits and max(hits) < 50, pick
