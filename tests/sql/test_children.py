"""Child tasks in SQL: spawn_children, wait_for_children, the wake of a waiting parent by its
last child, the cancel cascade and the tree view. No worker: the tests claim and finish by
hand, as a worker in any language would."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest

from tests.conftest import wait_blocked
from tests.sql.helpers import raises
from tests.sql.test_workflows import fail, finish, status

CHILDREN = [{"type": "resize", "params": {"f": f"{i}.png"}} for i in range(3)]


async def parent(conn: asyncpg.Connection) -> asyncpg.Record:
    """A claimed task of type 'fan', as the worker holding it sees it."""
    await conn.execute("SELECT pgtasks.submit_task('fan')")
    (row,) = await conn.fetch(
        "SELECT * FROM pgtasks.claim_tasks(worker_id => 'w', max_tasks => 1, task_types => '{fan}')"
    )
    return row


async def spawn(
    conn: asyncpg.Connection, row: asyncpg.Record, step: str = "spawn#1", children: object = None
) -> list[int]:
    return list(
        await conn.fetchval(
            "SELECT pgtasks.spawn_children(task_id => $1, lease_token => $2, step => $3,"
            " children => $4::text::jsonb)",
            row["id"], row["lease_token"], step, json.dumps(children or CHILDREN),
        )
    )  # fmt: skip


async def wait(conn: asyncpg.Connection, row: asyncpg.Record) -> tuple[str, object]:
    r = await conn.fetchrow(
        "SELECT state, results::text"
        "  FROM pgtasks.wait_for_children(task_id => $1, lease_token => $2)",
        row["id"], row["lease_token"],
    )  # fmt: skip
    return r["state"], (json.loads(r["results"]) if r["results"] is not None else None)


async def claim_children(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT * FROM pgtasks.claim_tasks(worker_id => 'w', max_tasks => 100,"
            " task_types => '{resize}')"
        )
    )


async def test_spawn_then_wait_then_resume_with_results_in_spawn_order(conn):
    p = await parent(conn)
    ids = await spawn(conn, p)
    assert ids == sorted(ids) and len(ids) == 3
    rows = await conn.fetch(
        "SELECT id, spawned_by, params->>'f' AS f FROM pgtasks.tasks"
        " WHERE id = ANY($1) ORDER BY id",
        ids,
    )
    assert [(r["spawned_by"], r["f"]) for r in rows] == [(p["id"], f"{i}.png") for i in range(3)]
    # The spawn is a checkpointed step: a resumed attempt sees it with the other steps.
    step = await conn.fetchval(
        "SELECT result::text FROM pgtasks.task_step_names WHERE task_id = $1", p["id"]
    )
    assert json.loads(step) == {"spawned": ids}

    assert await wait(conn, p) == ("waiting", None)
    assert await status(conn, p["id"]) == "COMMIT"
    note = await conn.fetchval(
        "SELECT note FROM pgtasks.task_history WHERE task_id = $1 AND to_status = 'COMMIT'", p["id"]
    )
    assert note == "waiting for its children"

    kids = await claim_children(conn)
    # Finished out of order, two in one statement: the parent wakes only with the last.
    by_id = {k["id"]: k for k in kids}
    await finish(conn, [by_id[ids[2]]], {"n": 2})
    await fail(conn, by_id[ids[0]], "bad pixel")
    ready = "SELECT run_at <= pgtasks.now() FROM pgtasks.tasks WHERE id = $1"
    assert not await conn.fetchval(ready, p["id"])
    await finish(conn, [by_id[ids[1]]], {"n": 1})
    assert await conn.fetchval(ready, p["id"])

    again = await parent_again(conn, p["id"])
    assert await spawn(conn, again) == ids  # the resumed spawn returns the same children
    assert (
        await conn.fetchval("SELECT count(*) FROM pgtasks.tasks WHERE spawned_by = $1", p["id"])
        == 3
    )
    state, results = await wait(conn, again)
    assert state == "done"
    assert results == [
        {"id": ids[0], "status": "FAILED", "error": "bad pixel"},
        {"id": ids[1], "status": "DONE", "result": {"n": 1}},
        {"id": ids[2], "status": "DONE", "result": {"n": 2}},
    ]
    tree = await conn.fetch(
        "SELECT child_id, position, status::text FROM pgtasks.task_children WHERE parent_id = $1"
        " ORDER BY child_id",
        p["id"],
    )
    assert [(r["child_id"], r["position"], r["status"]) for r in tree] == [
        (ids[0], 1, "FAILED"), (ids[1], 2, "DONE"), (ids[2], 3, "DONE"),
    ]  # fmt: skip


async def parent_again(conn: asyncpg.Connection, tid: int) -> asyncpg.Record:
    (row,) = await conn.fetch(
        "SELECT * FROM pgtasks.claim_tasks(worker_id => 'w', max_tasks => 1, task_types => '{fan}')"
    )
    assert row["id"] == tid
    return row


async def test_double_spawn_of_one_step_is_idempotent(conn):
    p = await parent(conn)
    first = await spawn(conn, p)
    # Called again (a resumed attempt, or the same one after a lost answer), with other
    # children even: the same ids, nothing submitted.
    assert await spawn(conn, p, children=[{"type": "other"}]) == first
    assert (
        await conn.fetchval("SELECT count(*) FROM pgtasks.tasks WHERE spawned_by = $1", p["id"])
        == 3
    )
    # Another step spawns more, after the first in spawn order.
    second = await spawn(conn, p, step="spawn#2", children=[{"type": "resize"}])
    assert second[0] > first[-1]
    # A step name taken by an ordinary checkpoint is no spawn.
    await conn.execute(
        "SELECT pgtasks.checkpoint(task_id => $1, lease_token => $2, step => 'download',"
        " result => '1')",
        p["id"], p["lease_token"],
    )  # fmt: skip
    await raises(
        conn,
        "SELECT pgtasks.spawn_children($1, $2, 'download', '[{\"type\": \"resize\"}]')",
        "PT513", p["id"], p["lease_token"],
    )  # fmt: skip


async def test_stale_token_cannot_spawn_nor_wait(conn):
    p = await parent(conn)
    await conn.execute(
        "SELECT pgtasks.yield_task(task_id => $1, lease_token => $2)", p["id"], p["lease_token"]
    )
    spawn_sql = "SELECT pgtasks.spawn_children($1, $2, 'spawn#1', '[{\"type\": \"resize\"}]')"
    await raises(conn, spawn_sql, "PT002", p["id"], p["lease_token"])
    await raises(conn, "SELECT * FROM pgtasks.wait_for_children($1, $2)", "PT002",
                 p["id"], p["lease_token"])  # fmt: skip
    await raises(conn, spawn_sql, "PT117", p["id"], None)
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.tasks WHERE task_type = 'resize'") == 0


async def test_bad_children_are_refused_with_a_hint(conn):
    p = await parent(conn)
    sql = "SELECT pgtasks.spawn_children($1, $2, 'spawn#1', $3::text::jsonb)"
    for bad in ([], {"type": "x"}, [{"params": {}}], [{"type": "x", "bogus": 1}],
                [{"type": "x", "timeout": "soon"}], [{"type": "x", "params": []}]):  # fmt: skip
        await raises(conn, sql, "PT512", p["id"], p["lease_token"], json.dumps(bad))
    await raises(conn, sql, "PT512", p["id"], p["lease_token"], None)
    await raises(
        conn, "SELECT pgtasks.spawn_children($1, $2, ' ', '[{\"type\": \"x\"}]')", "PT109",
        p["id"], p["lease_token"],
    )  # fmt: skip
    assert (
        await conn.fetchval("SELECT count(*) FROM pgtasks.tasks WHERE spawned_by IS NOT NULL") == 0
    )


async def test_cancelling_the_parent_cancels_its_unfinished_children_and_theirs(conn):
    p = await parent(conn)
    ids = await spawn(conn, p, children=[{"type": "resize"}, {"type": "resize"}, {"type": "fan"}])
    assert await wait(conn, p) == ("waiting", None)
    kids = {k["id"]: k for k in await claim_children(conn)}
    await finish(conn, [kids[ids[0]]], {"ok": True})  # ends before the cancel: stays DONE
    # The third child is itself a parent, running, with a child of its own.
    (mid,) = await conn.fetch(
        "SELECT * FROM pgtasks.claim_tasks(worker_id => 'w', max_tasks => 1, task_types => '{fan}')"
    )
    assert mid["id"] == ids[2]
    (grandchild,) = await spawn(conn, mid, children=[{"type": "leaf"}])

    await conn.fetch("SELECT pgtasks.cancel_task($1)", p["id"])
    got = await conn.fetch(
        "SELECT id, status::text, error FROM pgtasks.tasks WHERE id = ANY($1) ORDER BY id",
        [*ids, grandchild],
    )
    assert [r["status"] for r in got] == ["DONE", "CANCELLED", "CANCELLED", "CANCELLED"]
    assert got[1]["error"] == f"cancelled: parent task {p['id']} was cancelled"
    assert got[3]["error"] == f"cancelled: parent task {ids[2]} was cancelled"
    # The running ones lost their lease: their late writes are fenced off.
    await raises(conn, "SELECT pgtasks.finish_task($1, $2)", "PT002",
                 kids[ids[1]]["id"], kids[ids[1]]["lease_token"])  # fmt: skip


async def test_a_parent_without_children_is_done_at_once(conn):
    p = await parent(conn)
    assert await wait(conn, p) == ("done", [])
    assert await status(conn, p["id"]) == "RUNNING"


async def test_children_ending_while_parent_runs_leave_it_running(conn):
    p = await parent(conn)
    ids = await spawn(conn, p, children=[{"type": "resize"}])
    await finish(conn, await claim_children(conn), {"x": 1})
    assert await status(conn, p["id"]) == "RUNNING"
    assert await wait(conn, p) == ("done", [{"id": ids[0], "status": "DONE", "result": {"x": 1}}])


async def test_a_child_ending_while_its_parent_is_cancelled_gives_way_without_a_deadlock(conn, dsn):
    """The two lock orders meet: a child's finish holds the child and wants its parent, the
    parent's cancel holds the parent and wants the child. The child's side waits at most
    200 ms (below deadlock_timeout) and fails with 55P03, writing nothing; the cancel goes
    through and cancels the child."""
    p = await parent(conn)
    (kid,) = await spawn(conn, p, children=[{"type": "resize"}])
    (k,) = await claim_children(conn)
    finisher = await asyncpg.connect(dsn)
    canceller = await asyncpg.connect(dsn)
    try:
        tx = finisher.transaction()
        await tx.start()
        # The child's worker holds the child's row (a heartbeat in its open transaction).
        await finisher.fetch("SELECT * FROM pgtasks.heartbeat('w', ARRAY[$1::bigint], ARRAY[$2])",
                             kid, k["lease_token"])  # fmt: skip
        pid = await canceller.fetchval("SELECT pg_backend_pid()")
        cancel = asyncio.create_task(canceller.fetchval("SELECT pgtasks.cancel_task($1)", p["id"]))
        await wait_blocked(conn, pid)
        with pytest.raises(asyncpg.LockNotAvailableError):
            await finisher.execute("SELECT pgtasks.finish_task($1, $2)", kid, k["lease_token"])
        await tx.rollback()
        assert await asyncio.wait_for(cancel, 30) == "RUNNING"
    finally:
        await finisher.close()
        await canceller.close()
    assert await status(conn, kid) == "CANCELLED"
    assert await status(conn, p["id"]) == "CANCELLED"


async def test_children_carry_the_trace_context_given_to_the_spawn(conn):
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    p = await parent(conn)
    ids = await conn.fetchval(
        "SELECT pgtasks.spawn_children($1, $2, 'spawn#1', '[{\"type\": \"resize\"}]', $3)",
        p["id"], p["lease_token"], tp,
    )  # fmt: skip
    assert await conn.fetchval("SELECT traceparent FROM pgtasks.tasks WHERE id = $1", ids[0]) == tp
    await raises(
        conn, "SELECT pgtasks.spawn_children($1, $2, 'spawn#2', '[{\"type\": \"x\"}]', 'nope')",
        "PT131", p["id"], p["lease_token"],
    )  # fmt: skip


async def test_a_wait_racing_the_last_childs_end_is_never_left_parked(conn, dsn):
    """The last child's finish, not yet committed, holds the parent's row (wake_spawners),
    so a wait_for_children at that moment waits for it, then sees the child ended and
    returns its result instead of parking a task nothing would wake."""
    p = await parent(conn)
    (kid,) = await spawn(conn, p, children=[{"type": "resize"}])
    (k,) = await claim_children(conn)
    finisher = await asyncpg.connect(dsn)
    waiter = await asyncpg.connect(dsn)
    try:
        tx = finisher.transaction()
        await tx.start()
        await finisher.execute("SELECT pgtasks.finish_task($1, $2, '7')", kid, k["lease_token"])
        pid = await waiter.fetchval("SELECT pg_backend_pid()")
        wait_call = asyncio.create_task(
            waiter.fetchrow(
                "SELECT state, results::text FROM pgtasks.wait_for_children($1, $2)",
                p["id"],
                p["lease_token"],
            )
        )
        await wait_blocked(conn, pid)
        await tx.commit()
        row = await asyncio.wait_for(wait_call, 30)
    finally:
        await finisher.close()
        await waiter.close()
    assert row["state"] == "done"
    assert json.loads(row["results"]) == [{"id": kid, "status": "DONE", "result": 7}]
    assert await status(conn, p["id"]) == "RUNNING"
