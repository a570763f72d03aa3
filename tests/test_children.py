"""Child tasks (ctx.spawn / ctx.wait_for_children) with real workers: the results in spawn
order, failures reported in place, the sync form, and the issue's proof: a parent killed
with kill -9 during its spawn and again during its wait, whose 100 children each run
exactly once, and which resumes with all 100 results.

Counts come from the database (child_runs of tests/apps/children.py, the task rows),
never from the code under test. Timeouts only bound a hung test.
"""

from __future__ import annotations

import asyncpg
import pytest

from pgtasks import Client, PgTasksError
from tests.apps.children import CHILDREN_DDL
from tests.conftest import WorkerProcs, wait_for
from tests.fleet import StartWorker

PARKED = (
    "SELECT t.status = 'COMMIT' AND t.run_at > pgtasks.now() + interval '1 year'"
    "  FROM pgtasks.tasks t WHERE t.id = $1"
)


@pytest.fixture
async def db(conn: asyncpg.Connection) -> asyncpg.Connection:
    await conn.execute(CHILDREN_DDL)
    return conn


async def test_a_parent_gets_its_childrens_results_in_spawn_order_with_failures_in_place(
    db: asyncpg.Connection, client: Client, start_worker: StartWorker
) -> None:
    parent = await client.submit("fan_out", {"n": 4, "fail": [1]})
    # One slot: the parent must give it up while it waits, or no child could run.
    await start_worker(concurrency=1, queues=["parents", "kids"])
    result = await client.wait(parent, timeout=60)
    ids = result["ids"]
    assert result["results"] == [
        {"i": 0, "sq": 0},
        {"failed": "FAILED", "error": "PermanentError: child 1 refused", "id": ids[1]},
        {"i": 2, "sq": 4},
        {"i": 3, "sq": 9},
    ]
    assert result["attempt"] == 2  # parked once, woken by its last child
    info = await client.get(parent)
    assert info.retries == "0/5"  # the wait spent no retry
    spawned = await db.fetch(
        "SELECT id FROM pgtasks.tasks WHERE spawned_by = $1 ORDER BY id", parent
    )
    assert [r["id"] for r in spawned] == ids
    assert await db.fetchval(
        "SELECT count(*) FROM child_runs WHERE task_id = $1 AND label = 'body'", parent
    ) == 2  # fmt: skip


async def test_a_sync_task_spawns_and_waits_the_same_way(
    db: asyncpg.Connection, client: Client, start_worker: StartWorker
) -> None:
    parent = await client.submit("sync_fan_out", {"n": 3})
    await start_worker(concurrency=2, queues=["parents", "kids"])
    result = await client.wait(parent, timeout=60)
    assert result["results"] == [{"i": i, "sq": i * i} for i in range(3)]
    steps = await db.fetch("SELECT name FROM pgtasks.task_step_names WHERE task_id = $1", parent)
    assert [r["name"] for r in steps] == ["squares"]


@pytest.mark.slow
async def test_kill_9_during_the_spawn_and_during_the_wait_runs_each_child_once(
    db: asyncpg.Connection, client: Client, spawn_worker: WorkerProcs, dsn: str
) -> None:
    app = "tests/apps/children.py"
    parents = ("--queues", "parents", "--lease", "2", "--poll-interval", "0.2")
    parent = await client.submit("fan_out", {"n": 100})

    # 1. Killed during the spawn: the test holds task_spawns, so the spawn's statement
    # has inserted the children and waits to record the spawn, uncommitted, when the
    # worker dies. Whether that statement then commits or not, no child may be doubled.
    holder = await asyncpg.connect(dsn)
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("LOCK TABLE pgtasks.task_spawns IN SHARE MODE")
        first = spawn_worker.start(*parents, app=app)
        await wait_for(
            db,
            "SELECT count(*) FROM pg_locks WHERE NOT granted"
            " AND relation = 'pgtasks.task_spawns'::regclass",
        )
        first.kill()
        first.wait(10)
        await tx.rollback()
    finally:
        await holder.close()

    # 2. Another worker takes the parent over (its lease ran out), spawns (or finds the
    # spawn) and parks: no child worker runs yet, so the wait really waits.
    second = spawn_worker.start(*parents, app=app)
    await wait_for(db, PARKED, parent, timeout=90)
    assert await db.fetchval(
        "SELECT count(*) FROM pgtasks.tasks WHERE spawned_by = $1", parent
    ) == 100  # fmt: skip

    # 3. Killed during the wait. The parent holds nothing, so nothing is rescued.
    second.kill()
    second.wait(10)
    spawn_worker.start("--queues", "kids", "--concurrency", "20", "--poll-interval", "0.2", app=app)
    # A long lease from here on: no pause of a loaded host may get this attempt rescued.
    third = spawn_worker.start("--queues", "parents", "--lease", "30", "--poll-interval", "0.2",
                               app=app)  # fmt: skip

    result = await client.wait(parent, timeout=120)
    assert result["results"] == [{"i": i, "sq": i * i} for i in range(100)]
    assert result["pid"] == third.pid
    children = await db.fetch(
        "SELECT id FROM pgtasks.tasks WHERE spawned_by = $1 ORDER BY id", parent
    )
    assert [r["id"] for r in children] == result["ids"]
    runs = await db.fetch(
        "SELECT r.task_id, count(*) AS n FROM child_runs r JOIN pgtasks.tasks t ON t.id = r.task_id"
        " WHERE t.spawned_by = $1 AND r.label = 'child' GROUP BY r.task_id",
        parent,
    )
    assert len(runs) == 100 and all(r["n"] == 1 for r in runs)
    # The parent's body ran on each of the three workers, the spawn recorded once.
    spawns = await db.fetchval(
        "SELECT count(*) FROM pgtasks.task_spawns WHERE parent_id = $1", parent
    )
    assert spawns == 1


def test_a_child_is_a_node_without_a_name_or_parents() -> None:
    from pgtasks import task_node
    from pgtasks.workflows import child_spec

    assert child_spec(task_node("square", {"i": 1}, timeout=30, priority=2)) == {
        "type": "square", "params": {"i": 1}, "queue": "kids", "max_retries": 0,
        "timeout": 30.0, "priority": 2,
    }  # fmt: skip
    for bad in (task_node("square", name="x"), task_node("square", on_parent_failure="run")):
        with pytest.raises(PgTasksError, match="a spawned child takes no"):
            child_spec(bad)
    with pytest.raises(PgTasksError, match="takes task nodes"):
        child_spec("square")  # type: ignore[arg-type]
