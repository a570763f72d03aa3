"""Workflows in SQL: depends_on, submit_workflow, release, failure propagation,
revival on retry, cancel_workflow, the view and the graph. No worker: the tests claim and
finish by hand, as a worker in any language would."""

from __future__ import annotations

import json

import asyncpg
import pytest

from pgtasks import db
from tests.sql.helpers import raises


async def claim(conn: asyncpg.Connection, n: int = 100) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT * FROM pgtasks.claim_tasks(worker_id => 'w', max_tasks => $1)", n
    )


async def finish(conn: asyncpg.Connection, rows: list[asyncpg.Record], result: object = None):
    if not rows:
        return
    await conn.fetch(
        "SELECT * FROM pgtasks.finish_tasks($1, $2, $3::text[]::jsonb[])",
        [r["id"] for r in rows],
        [r["lease_token"] for r in rows],
        [json.dumps(result if result is not None else {"id": r["id"]}) for r in rows],
    )


async def fail(conn: asyncpg.Connection, row: asyncpg.Record, error: str = "boom") -> None:
    await conn.execute(
        "SELECT pgtasks.fail_task(task_id => $1, lease_token => $2, error => $3,"
        " retryable => false)",
        row["id"], row["lease_token"], error,
    )  # fmt: skip


async def parents_of(conn: asyncpg.Connection, row: asyncpg.Record) -> dict:
    """parent_results as the worker that claimed `row` reads them, with its lease token."""
    raw = await conn.fetchval(
        "SELECT pgtasks.parent_results($1, $2)::text", row["id"], row["lease_token"]
    )
    return json.loads(raw)


async def status(conn: asyncpg.Connection, tid: int) -> str:
    return await conn.fetchval("SELECT status::text FROM pgtasks.tasks WHERE id = $1", tid)


async def submit(conn: asyncpg.Connection, spec: dict) -> dict:
    return json.loads(
        await conn.fetchval(
            "SELECT pgtasks.submit_workflow($1::text::jsonb)::text", json.dumps(spec)
        )
    )


def nodes(*specs: tuple[str, list[str]], **extra: object) -> dict:
    return {"nodes": [{"name": n, "type": "t", "after": after} for n, after in specs], **extra}


async def test_depends_on_waits_and_is_released_by_the_parents_finish(conn):
    a = await conn.fetchval("SELECT pgtasks.submit_task('t')")
    b = await conn.fetchval("SELECT pgtasks.submit_task('t', depends_on => ARRAY[$1]::bigint[])", a)
    assert await status(conn, b) == "WAITING"
    rows = await claim(conn)
    assert [r["id"] for r in rows] == [a], "a waiting child is never claimable"
    await finish(conn, rows, {"x": 1})
    assert await status(conn, b) == "PENDING"
    (child,) = await claim(conn)
    got = await parents_of(conn, child)
    assert got == {str(a): {"node": None, "status": "DONE", "result": {"x": 1}}}


async def test_the_last_parents_finish_releases_the_child_in_the_same_transaction(conn, dsn):
    """A child becomes claimable in the same transaction that finishes its last parent:
    no window where every parent is done and the child still waits. Inside one transaction
    the child is PENDING and claim_tasks takes it, while another session still sees it
    WAITING until the commit."""
    wf = await submit(conn, nodes(("a", []), ("b", []), ("c", ["a", "b"])))
    ids = wf["nodes"]
    parents = await claim(conn)
    assert sorted(r["id"] for r in parents) == [ids["a"], ids["b"]]
    await finish(conn, [r for r in parents if r["id"] == ids["a"]])
    assert await status(conn, ids["c"]) == "WAITING", "one parent is still running"
    other = await db.connect(dsn)
    try:
        async with conn.transaction():
            await finish(conn, [r for r in parents if r["id"] == ids["b"]])
            assert await status(conn, ids["c"]) == "PENDING"
            assert [r["id"] for r in await claim(conn)] == [ids["c"]]
            assert await status(conn, ids["c"]) == "RUNNING"
            assert await status(other, ids["c"]) == "WAITING", "nothing is visible before commit"
        assert await status(other, ids["c"]) == "RUNNING"
    finally:
        await other.close()


async def test_chain_from_sql_runs_in_order(conn):
    wf = await submit(conn, nodes(("a", []), ("b", ["a"]), ("c", ["b"]), name="etl"))
    ids = wf["nodes"]
    order = []
    while True:
        rows = await claim(conn)
        if not rows:
            break
        order += [r["id"] for r in rows]
        await finish(conn, rows)
    assert order == [ids["a"], ids["b"], ids["c"]]
    row = await conn.fetchrow("SELECT * FROM pgtasks.workflows WHERE id = $1", wf["workflow_id"])
    assert (row["name"], row["state"], row["total"], row["done"]) == ("etl", "done", 3, 3)


async def drain(
    conn: asyncpg.Connection, failing: set[int] = frozenset(), parents: dict | None = None
) -> list[int]:
    """Claim and finish until nothing is claimable; tasks in `failing` fail. Claim order.
    With `parents`, each claimed task's parent_results are kept there, by task id."""
    order: list[int] = []
    while rows := await claim(conn):
        order += [r["id"] for r in rows]
        for r in rows:
            if parents is not None:
                parents[r["id"]] = await parents_of(conn, r)
            if r["id"] in failing:
                await fail(conn, r)
        await finish(conn, [r for r in rows if r["id"] not in failing])
    return order


async def test_chord_callback_is_released_once_after_all_children_with_all_results(conn):
    spec = {"nodes": [{"name": f"c{i}", "type": "t", "params": {"i": i}} for i in range(50)]
            + [{"name": "cb", "type": "t", "after": [f"c{i}" for i in range(50)]}]}  # fmt: skip
    wf = await submit(conn, spec)
    ids = wf["nodes"]
    first = await claim(conn, 30)
    await finish(conn, first)
    assert await status(conn, ids["cb"]) == "WAITING"
    assert (
        await conn.fetchval("SELECT waiting_on FROM pgtasks.tasks WHERE id = $1", ids["cb"]) == 20
    )
    seen: dict = {}
    order = await drain(conn, parents=seen)
    assert order[-1] == ids["cb"] and order.count(ids["cb"]) == 1
    got = seen[ids["cb"]]
    assert list(got) == [str(ids[f"c{i}"]) for i in range(50)], "keyed by parent id, submit order"
    assert all(v["status"] == "DONE" for v in got.values())


async def test_diamond_runs_the_join_once_after_both(conn):
    wf = await submit(conn, nodes(("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"])))
    ids = wf["nodes"]
    order = await drain(conn)
    assert order.index(ids["d"]) > max(order.index(ids["b"]), order.index(ids["c"]))
    assert order.count(ids["d"]) == 1
    history = await conn.fetch(
        "SELECT from_status::text, to_status::text FROM pgtasks.task_history"
        " WHERE task_id = $1 ORDER BY at",
        ids["d"],
    )
    assert [tuple(h) for h in history][:2] == [(None, "WAITING"), ("WAITING", "PENDING")]


async def test_failure_cancels_what_follows_with_the_reason_and_retry_revives_it(conn):
    wf = await submit(conn, nodes(("a", []), ("b", ["a"]), ("c", ["b"]), ("d", ["c"])))
    ids = wf["nodes"]
    await drain(conn, failing={ids["b"]})
    assert [await status(conn, ids[n]) for n in "abcd"] == [
        "DONE",
        "FAILED",
        "CANCELLED",
        "CANCELLED",
    ]
    errors = await conn.fetch(
        "SELECT error FROM pgtasks.tasks WHERE id = ANY($1::bigint[]) ORDER BY id",
        [ids["c"], ids["d"]],
    )
    assert all(f"parent task {ids['b']} (b) ended FAILED" in e["error"] for e in errors)
    row = await conn.fetchrow("SELECT * FROM pgtasks.workflows WHERE id = $1", wf["workflow_id"])
    assert (row["state"], row["failed"], row["cancelled"]) == ("failed", 1, 2)

    await conn.execute("SELECT pgtasks.retry_task($1)", ids["b"])
    assert [await status(conn, ids[n]) for n in "bcd"] == ["PENDING", "WAITING", "WAITING"]
    assert await drain(conn) == [ids["b"], ids["c"], ids["d"]]
    assert (await conn.fetchrow("SELECT state FROM pgtasks.workflows"))["state"] == "done"


async def test_run_on_parent_failure_gets_partial_results(conn):
    spec = nodes(("x", []), ("y", []), ("z", []))
    spec["nodes"].append(
        {"name": "cb", "type": "t", "after": ["x", "y", "z"], "on_parent_failure": "run"}
    )
    ids = (await submit(conn, spec))["nodes"]
    seen: dict = {}
    order = await drain(conn, failing={ids["y"]}, parents=seen)
    assert order[-1] == ids["cb"]
    got = seen[ids["cb"]]
    assert got[str(ids["y"])] == {"node": "y", "status": "FAILED", "error": "boom"}
    assert got[str(ids["x"])]["status"] == "DONE"
    assert (await conn.fetchrow("SELECT state FROM pgtasks.workflows"))["state"] == "done"


async def test_a_retried_child_waits_for_unfinished_parents(conn):
    wf = await submit(conn, nodes(("a", []), ("b", ["a"])))
    ids = wf["nodes"]
    await conn.execute("SELECT pgtasks.cancel_task($1)", ids["b"])
    await conn.execute("SELECT pgtasks.retry_task($1)", ids["b"])
    assert await status(conn, ids["b"]) == "WAITING"
    await conn.execute("SELECT pgtasks.cancel_task($1)", ids["a"])
    assert await status(conn, ids["b"]) == "CANCELLED", "the cancelled parent cancels it again"
    await raises(conn, f"SELECT pgtasks.retry_task({ids['b']})", "PT510")


@pytest.mark.parametrize(
    ("spec", "sqlstate"),
    [
        ({"nodes": []}, "PT501"),
        ({}, "PT501"),
        (
            {
                "nodes": [
                    {"name": "a", "type": "t", "after": ["b"]},
                    {"name": "b", "type": "t", "after": ["a"]},
                ]
            },
            "PT504",
        ),
        ({"nodes": [{"name": "a", "type": "t", "after": ["a"]}]}, "PT504"),
        ({"nodes": [{"name": "a", "type": "t", "after": ["nope"]}]}, "PT503"),
        ({"nodes": [{"name": "a", "type": "t"}, {"name": "a", "type": "t"}]}, "PT502"),
        ({"nodes": [{"type": "t"}]}, "PT502"),
        ({"nodes": [{"name": "a", "type": "t", "priority": "high"}]}, "PT506"),
        ({"nodes": [{"name": "a", "type": "t", "timeout": "soon"}]}, "PT506"),
        ({"nodes": [{"name": "a", "type": "t", "on_parent_failure": "maybe"}]}, "PT506"),
        ({"nodes": [{"name": "a", "type": "t", "params": []}]}, "PT506"),
        ({"nodes": [{"name": "a", "type": ""}]}, "PT101"),
    ],
)
async def test_a_bad_spec_inserts_nothing(conn, spec, sqlstate):
    await raises(
        conn, "SELECT pgtasks.submit_workflow($1::text::jsonb)", sqlstate, json.dumps(spec)
    )
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.tasks") == 0
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.task_edges") == 0
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.workflow_runs") == 0


async def test_nodes_carry_policy_and_flow_control(conn):
    spec = {"name": "p", "nodes": {
        "a": {"type": "t", "queue": "q1", "priority": 7, "timeout": 30, "max_retries": 1,
              "concurrency_key": "k"},
        "b": {"type": "t", "after": ["a"], "backoff_base": "2 seconds"}}}  # fmt: skip
    ids = (await submit(conn, spec))["nodes"]
    a = await conn.fetchrow("SELECT * FROM pgtasks.tasks WHERE id = $1", ids["a"])
    assert (a["queue"], a["priority"], a["timeout"].total_seconds(), a["max_retries"]) == (
        "q1",
        7,
        30,
        1,
    )
    assert (a["concurrency_key"], a["concurrency_limit"], a["workflow_node"]) == ("k", 1, "a")
    b = await conn.fetchrow("SELECT * FROM pgtasks.tasks WHERE id = $1", ids["b"])
    assert b["backoff_base"].total_seconds() == 2 and b["workflow_id"] == a["workflow_id"]


async def test_cancel_workflow_stops_running_and_cancels_waiting(conn):
    ids = (await submit(conn, nodes(("a", []), ("b", []), ("c", ["a", "b"]))))["nodes"]
    wf = await conn.fetchval("SELECT workflow_id FROM pgtasks.task_status WHERE id = $1", ids["a"])
    rows = await claim(conn, 1)
    notes: list[str] = []
    await conn.add_listener("pgtasks_cancel", lambda *a: notes.append(a[-1]))
    assert await conn.fetchval("SELECT pgtasks.cancel_workflow($1)", wf) == 3
    assert {await status(conn, ids[n]) for n in "abc"} == {"CANCELLED"}
    assert notes == [str(rows[0]["id"])]  # a hint: the task id, nothing more
    assert (await conn.fetchrow("SELECT state FROM pgtasks.workflows"))["state"] == "cancelled"
    await raises(conn, "SELECT pgtasks.cancel_workflow(999)", "PT508")


async def test_cancel_workflow_gives_every_task_it_cancels_the_reason(conn):
    spec = nodes(("done", []), ("a", []), ("b", []), ("c", ["a", "b"]), name="nightly")
    spec["nodes"][1]["max_retries"] = 3
    ids = (await submit(conn, spec))["nodes"]
    wf = await conn.fetchval("SELECT workflow_id FROM pgtasks.tasks WHERE id = $1", ids["a"])
    await finish(conn, await claim(conn, 1))
    (a,) = await claim(conn, 1)
    await conn.execute(
        "SELECT pgtasks.fail_task(task_id => $1, lease_token => $2, error => 'first try')",
        a["id"], a["lease_token"],
    )  # fmt: skip
    assert (await status(conn, ids["a"]), a["id"]) == ("COMMIT", ids["a"])
    (b,) = await claim(conn, 1)
    assert b["id"] == ids["b"]
    assert await conn.fetchval("SELECT pgtasks.cancel_workflow($1)", wf) == 3
    rows = await conn.fetch(
        "SELECT workflow_node, status::text, error FROM pgtasks.tasks ORDER BY id"
    )
    reason = f"cancelled: workflow {wf} (nightly) cancelled"
    assert [tuple(r) for r in rows] == [
        ("done", "DONE", None),
        ("a", "CANCELLED", reason),  # not its earlier attempt's error, kept in task_errors
        ("b", "CANCELLED", reason),
        ("c", "CANCELLED", reason),
    ]
    assert await conn.fetchval("SELECT error FROM pgtasks.task_errors") == "first try"

    unnamed = (await submit(conn, nodes(("x", []))))["nodes"]["x"]
    wf2 = await conn.fetchval("SELECT workflow_id FROM pgtasks.tasks WHERE id = $1", unnamed)
    await conn.fetchval("SELECT pgtasks.cancel_workflow($1)", wf2)
    assert await conn.fetchval("SELECT error FROM pgtasks.tasks WHERE id = $1", unnamed) == (
        f"cancelled: workflow {wf2} cancelled"
    )


async def test_workflow_graph_lists_nodes_with_parents(conn):
    ids = (await submit(conn, nodes(("a", []), ("b", ["a"]))))["nodes"]
    wf = await conn.fetchval("SELECT workflow_id FROM pgtasks.tasks WHERE id = $1", ids["a"])
    rows = await conn.fetch("SELECT * FROM pgtasks.workflow_graph($1)", wf)
    assert [(r["node"], r["status"], r["parent_ids"]) for r in rows] == [
        ("a", "PENDING", []), ("b", "WAITING", [ids["a"]])
    ]  # fmt: skip


async def test_depends_on_errors(conn):
    a = await conn.fetchval("SELECT pgtasks.submit_task('t')")
    await raises(
        conn, "SELECT pgtasks.submit_task('t', depends_on => ARRAY[424242]::bigint[])", "PT503"
    )
    await raises(
        conn, "SELECT pgtasks.submit_task('t', depends_on => ARRAY[NULL]::bigint[])", "PT503"
    )
    await raises(
        conn,
        f"SELECT pgtasks.submit_task('t', depends_on => ARRAY[{a}], on_parent_failure => 'x')",
        "PT505",
    )
    await raises(
        conn,
        f"SELECT pgtasks.submit_task('t', depends_on => ARRAY[{a}], unique_key => 'k')",
        "PT506",
    )
    await conn.execute("SELECT pgtasks.cancel_task($1)", a)
    await raises(conn, f"SELECT pgtasks.submit_task('t', depends_on => ARRAY[{a}])", "PT507")
    b = await conn.fetchval(
        f"SELECT pgtasks.submit_task('t', depends_on => ARRAY[{a}], on_parent_failure => 'run')"
    )
    assert await status(conn, b) == "PENDING"
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.tasks") == 2


async def test_a_hand_written_transition_out_of_waiting_is_refused(conn):
    ids = (await submit(conn, nodes(("a", []), ("b", ["a"]))))["nodes"]
    await raises(
        conn, f"UPDATE pgtasks.tasks SET status = 'RUNNING' WHERE id = {ids['b']}", "PT001"
    )
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute(f"UPDATE pgtasks.tasks SET status = 'PENDING' WHERE id = {ids['b']}")


async def test_a_released_child_wakes_its_queue_like_an_insert(conn):
    a = await conn.fetchval("SELECT pgtasks.submit_task('t', queue => 'parents')")
    await conn.fetchval(
        "SELECT pgtasks.submit_task('t', queue => 'kids', depends_on => ARRAY[$1]::bigint[])", a
    )
    rows = await claim(conn)
    woken: list[str] = []
    await conn.add_listener("pgtasks_wakeup", lambda *args: woken.append(args[-1]))
    await finish(conn, rows)
    await conn.execute("SELECT 1")  # notifications arrive with the next round trip at latest
    kids = await conn.fetchval("SELECT pgtasks.queue_tag('kids')")
    assert woken == [kids]
    await conn.execute("SET pgtasks.wake_workers = off")
    b = await conn.fetchval("SELECT pgtasks.submit_task('t', queue => 'parents')")
    await conn.fetchval(
        "SELECT pgtasks.submit_task('t', queue => 'kids', depends_on => ARRAY[$1]::bigint[])", b
    )
    await finish(conn, await claim(conn))
    await conn.execute("SELECT 1")
    assert woken == [kids], "the off switch holds for releases too"
