"""Workflows with real worker processes: chains, chords, diamonds, failure
propagation, kill -9 in the middle, cancel while running, and 4 workers on a random DAG.
Order is checked from the database's history (task_events ids grow in insert order, and a
child's claim can only be written after its last parent's finish), never from clocks."""

from __future__ import annotations

import json
import random

import pytest

from pgtasks import (
    Client,
    InvalidWorkflow,
    WorkflowFailed,
    chain,
    chord,
    group,
    task_node,
)
from tests.apps.workflows import Scale, add, collect, fail, item, progress, sleep
from tests.fleet import wait_until

APP = "tests/apps/workflows.py"

# Every edge of a workflow whose child was claimed before its parent finished.
EARLY_CHILDREN = """
SELECT count(*) FROM pgtasks.task_edges e JOIN pgtasks.tasks c ON c.id = e.child_id
 WHERE c.workflow_id = $1
   AND (SELECT min(v.id) FROM pgtasks.task_events v
         WHERE v.task_id = e.child_id AND v.to_status = 'RUNNING')
     < (SELECT max(v.id) FROM pgtasks.task_events v
         WHERE v.task_id = e.parent_id AND v.to_status = 'DONE')
"""

# Tasks of a workflow that did not end DONE exactly once.
NOT_DONE_ONCE = """
SELECT count(*) FROM pgtasks.tasks t
 WHERE t.workflow_id = $1
   AND (SELECT count(*) FROM pgtasks.task_events v
         WHERE v.task_id = t.id AND v.to_status = 'DONE') <> 1
"""


@pytest.mark.slow
async def test_chain_of_three_from_sql_runs_in_order_each_step_seeing_its_parent(dsn, conn, fleet):
    fleet.start("--concurrency", "4", app=APP)
    spec = {"name": "sum", "nodes": [
        {"name": "a", "type": "wf.add", "params": {"n": 1}},
        {"name": "b", "type": "wf.sync_add", "params": {"n": 10}, "after": ["a"]},
        {"name": "c", "type": "wf.add", "params": {"n": 100}, "after": ["b"]},
    ]}  # fmt: skip
    out = json.loads(
        await conn.fetchval(
            "SELECT pgtasks.submit_workflow($1::text::jsonb)::text", json.dumps(spec)
        )
    )
    async with Client(dsn) as c:
        assert await c.wait_workflow(out["workflow_id"], timeout=60) == 111
        detail = await c.detail(out["nodes"]["b"])
    assert (detail.workflow_id, detail.workflow_node, detail.result) == (
        out["workflow_id"],
        "b",
        11,
    )
    assert await conn.fetchval(EARLY_CHILDREN, out["workflow_id"]) == 0


@pytest.mark.slow
async def test_chord_callback_runs_once_after_all_fifty_with_all_results(dsn, conn, fleet):
    fleet.start("--concurrency", "20", app=APP)
    async with Client(dsn) as c:
        wf = await c.submit(chord(group(item.s({"i": i}) for i in range(50)), collect.s()))
        assert len(wf.nodes) == 51
        assert await c.wait_workflow(wf, timeout=60) == {
            "n": 50, "results": list(range(50)), "failed": []
        }  # fmt: skip
    cb = wf.nodes["wf.collect"]
    assert await conn.fetchval("SELECT count(*) FROM test_runs WHERE task_id = $1", cb) == 1
    assert await conn.fetchval(EARLY_CHILDREN, int(wf)) == 0


@pytest.mark.slow
async def test_diamond_runs_the_join_once_after_both_branches(dsn, conn, fleet):
    fleet.start("--concurrency", "8", app=APP)
    async with Client(dsn) as c:
        wf = await c.submit(
            chain(
                add.s({"n": 1}, name="a"),
                group(add.s(name="b"), add.s(name="c")),
                collect.s(name="d"),
            )
        )
        assert await c.wait_workflow(wf, timeout=60) == {"n": 2, "results": [2, 2], "failed": []}
    assert (
        await conn.fetchval("SELECT count(*) FROM test_runs WHERE task_id = $1", wf.nodes["d"]) == 1
    )
    assert await conn.fetchval(EARLY_CHILDREN, int(wf)) == 0


@pytest.mark.slow
async def test_a_class_based_task_is_a_node_with_its_params_model(dsn, conn, fleet):
    """`MyTask.s(params)` on a BaseTask subclass: typed by its registered name, its params
    validated into its pydantic model by the worker, its parent's result read inside."""
    fleet.start("--concurrency", "4", app=APP)
    async with Client(dsn) as c:
        wf = await c.submit(chain(add.s({"n": 2}), Scale.s({"factor": 10}), add.s({"n": 1})))
        assert await c.wait_workflow(wf, timeout=60) == 21
        scaled = await c.detail(wf.nodes["wf.scale"])
    assert (scaled.task_type, scaled.result, scaled.workflow_id) == ("wf.scale", 20, int(wf))
    runs = await conn.fetchval(
        "SELECT count(*) FROM test_runs WHERE task_id = $1", wf.nodes["wf.scale"]
    )
    assert runs == 1
    assert await conn.fetchval(EARLY_CHILDREN, int(wf)) == 0


@pytest.mark.slow
async def test_wait_workflow_returns_each_sinks_result_and_a_group_runs_on_its_own(
    dsn, conn, fleet
):
    fleet.start("--concurrency", "8", app=APP)
    async with Client(dsn) as c:
        alone = await c.submit(group(item.s({"i": i}) for i in range(3)))
        assert await c.wait_workflow(alone, timeout=60) == {
            "wf.item#1": 0, "wf.item#2": 1, "wf.item#3": 2
        }  # fmt: skip
        fork = await c.submit(
            chain(add.s({"n": 1}, name="root"),
                  group(add.s({"n": 10}, name="left"), Scale.s({"factor": 5}, name="right")))
        )  # fmt: skip
        assert await c.wait_workflow(fork, timeout=60) == {"left": 11, "right": 5}
        assert (await c.workflow(alone))["state"] == "done"
    edges = await conn.fetchval(
        "SELECT count(*) FROM pgtasks.task_edges e JOIN pgtasks.tasks t ON t.id = e.child_id"
        " WHERE t.workflow_id = $1",
        int(alone),
    )
    assert edges == 0, "a group alone is independent tasks"
    assert await conn.fetchval(NOT_DONE_ONCE, int(alone)) == 0
    assert await conn.fetchval(EARLY_CHILDREN, int(fork)) == 0


@pytest.mark.slow
async def test_failure_in_a_chain_cancels_what_follows_and_run_gets_partial_results(
    dsn, conn, fleet
):
    fleet.start("--concurrency", "8", app=APP)
    async with Client(dsn) as c:
        wf = await c.submit(
            chain(add.s(name="a"), fail.s(name="b"), add.s(name="c"), add.s(name="d"))
        )
        with pytest.raises(WorkflowFailed) as info:
            await c.wait_workflow(wf, timeout=60)
        assert info.value.state == "failed" and info.value.errors["b"].endswith("step failed")
        states = {n["node"]: n["status"] for n in (await c.workflow(wf))["nodes"]}
        assert states == {"a": "DONE", "b": "FAILED", "c": "CANCELLED", "d": "CANCELLED"}
        c_task = await c.detail(wf.nodes["c"])
        assert c_task.error == f"cancelled: parent task {wf.nodes['b']} (b) ended FAILED"
        assert (
            await conn.fetchval("SELECT count(*) FROM test_runs WHERE task_id = $1", wf.nodes["c"])
            == 0
        )

        partial = await c.submit(
            chord([item.s({"i": 0}), fail.s(name="bad"), item.s({"i": 2})],
                  collect.s(name="cb", on_parent_failure="run"))
        )  # fmt: skip
        assert await c.wait_workflow(partial, timeout=60) == {
            "n": 3, "results": [0, 2], "failed": [partial.nodes["bad"]]
        }  # fmt: skip
        assert (await c.workflow(partial))["state"] == "done"


@pytest.mark.slow
async def test_kill_9_in_the_middle_the_workflow_completes_each_node_done_once(dsn, conn, fleet):
    doomed = fleet.start("--lease", "2", "--concurrency", "4", app=APP)
    async with Client(dsn) as c:
        wf = await c.submit(
            chain(group(sleep.s({"s": 1.5}) for _ in range(4)),
                  group(item.s({"i": i}) for i in range(10)), collect.s())
        )  # fmt: skip
        await wait_until(dsn, "SELECT count(*) >= 4 FROM test_runs", fleet=fleet)
        fleet.kill(doomed)
        fleet.start("--lease", "2", "--concurrency", "4", app=APP)
        result = await c.wait_workflow(wf, timeout=90)
    assert result == {"n": 10, "results": list(range(10)), "failed": []}
    assert await conn.fetchval(NOT_DONE_ONCE, int(wf)) == 0
    assert await conn.fetchval(EARLY_CHILDREN, int(wf)) == 0
    rescued = await conn.fetchval(
        "SELECT count(*) FROM pgtasks.tasks WHERE workflow_id = $1 AND attempt > 1", int(wf)
    )
    assert rescued >= 1, "the killed worker's tasks ran again elsewhere"


@pytest.mark.slow
async def test_cancel_a_workflow_stops_running_nodes_and_cancels_waiting_ones(dsn, conn, fleet):
    fleet.start("--concurrency", "4", app=APP)
    async with Client(dsn) as c:
        wf = await c.submit(chain(group(sleep.s({"s": 60}), sleep.s({"s": 60})), item.s({"i": 1})))
        await wait_until(
            dsn,
            "SELECT count(*) = 2 FROM pgtasks.tasks WHERE workflow_id = $1 AND status = 'RUNNING'",
            int(wf), fleet=fleet,
        )  # fmt: skip
        assert await c.cancel_workflow(wf) == 3
        with pytest.raises(WorkflowFailed) as info:
            await c.wait_workflow(wf, timeout=30)
        assert info.value.state == "cancelled"
        assert info.value.errors == dict.fromkeys(
            wf.nodes, f"cancelled: workflow {int(wf)} cancelled"
        ), "each task cancelled by cancel_workflow says why (sql/0019)"
    # The worker was told: it drops the attempts (nothing left running on it).
    await wait_until(dsn, "SELECT coalesce(sum(running), 0) = 0 FROM pgtasks.workers", fleet=fleet)
    statuses = await conn.fetch(
        "SELECT DISTINCT status::text FROM pgtasks.tasks WHERE workflow_id = $1", int(wf)
    )
    assert [s[0] for s in statuses] == ["CANCELLED"]
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM test_runs WHERE task_id = $1", wf.nodes["wf.item"]
        )
        == 0
    )


async def test_a_cycle_or_unknown_dependency_inserts_nothing(dsn, conn):
    async with Client(dsn) as c:
        for spec in (
            {
                "nodes": [
                    {"name": "a", "type": "t", "after": ["b"]},
                    {"name": "b", "type": "t", "after": ["a"]},
                ]
            },
            {"nodes": [{"name": "a", "type": "t", "after": ["ghost"]}]},
            {"nodes": []},
        ):
            with pytest.raises(InvalidWorkflow):
                await c.submit_workflow(spec)
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.tasks") == 0
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.task_edges") == 0
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.workflow_runs") == 0


@pytest.mark.slow
async def test_four_workers_on_a_random_dag_of_1000_nodes_respect_every_edge(dsn, conn, fleet):
    rng = random.Random(12)
    nodes = []
    for i in range(1000):
        earlier = range(max(0, i - 60), i)
        parents = rng.sample(earlier, min(len(earlier), rng.choice([0, 1, 1, 2, 3])))
        nodes.append({"name": f"n{i}", "type": "wf.node", "after": [f"n{p}" for p in parents]})
    async with Client(dsn) as c:
        wf = await c.submit_workflow({"name": "random", "nodes": nodes})
        for _ in range(4):
            fleet.start("--concurrency", "16", app=APP)
        await c.wait_workflow(wf, timeout=120)
    assert await conn.fetchval(EARLY_CHILDREN, int(wf)) == 0
    assert await conn.fetchval(NOT_DONE_ONCE, int(wf)) == 0
    runs = await conn.fetchval("SELECT count(DISTINCT task_id) = count(*) FROM test_runs")
    assert runs, "no node ran twice"
    workers = await conn.fetchval(
        "SELECT count(DISTINCT v.worker_id) FROM pgtasks.task_events v"
        " JOIN pgtasks.tasks t ON t.id = v.task_id"
        " WHERE t.workflow_id = $1 AND v.to_status = 'RUNNING'",
        int(wf),
    )
    assert workers >= 2


def test_builders_compile_to_one_spec():
    spec = chain(task_node("a"), group(task_node("b"), chain(task_node("c"), task_node("c"))),
                 task_node("d", {"x": 1}, queue="q", timeout=5))  # fmt: skip
    from pgtasks.workflows import compile_workflow

    got = {n["name"]: (n.get("after", []), n["params"]) for n in compile_workflow(spec)["nodes"]}
    assert got == {
        "a": ([], {}), "b": (["a"], {}), "c#1": (["a"], {}), "c#2": (["c#1"], {}),
        "d": (["b", "c#2"], {"x": 1}),
    }  # fmt: skip
    d = compile_workflow(spec)["nodes"][-1]
    assert (d["queue"], d["timeout"]) == ("q", 5.0)


@pytest.mark.slow
async def test_cli_lists_shows_and_cancels_a_workflow(dsn, conn):
    from tests.test_cli import cli

    async with Client(dsn) as c:
        wf = await c.submit_workflow(
            chord([task_node("wf.item", {"i": i}) for i in range(3)], task_node("wf.collect")),
            name="nightly",
        )
    listed = cli(dsn, "workflows")
    assert listed.returncode == 0 and "nightly" in listed.stdout and "running" in listed.stdout
    shown = cli(dsn, "workflow", str(int(wf)))
    assert shown.returncode == 0, shown.stderr
    assert (
        "wf.collect" in shown.stdout and "WAITING" in shown.stdout and "also after" in shown.stdout
    )
    cancelled = cli(dsn, "workflow", "cancel", str(int(wf)))
    assert cancelled.returncode == 0 and "4 task(s) cancelled" in cancelled.stdout
    missing = cli(dsn, "workflow", "424242")
    assert missing.returncode == 1 and "workflow 424242 does not exist" in missing.stderr


@pytest.mark.slow
async def test_cli_tree_shows_each_nodes_status_and_the_reported_progress(dsn, fleet):
    from tests.test_cli import cli

    fleet.start("--concurrency", "4", app=APP)
    async with Client(dsn) as c:
        wf = await c.submit(
            chain(item.s({"i": 1}, name="first"),
                  progress.s({"current": 3, "total": 4}, name="slow"),
                  item.s({"i": 2}, name="last"))
        )  # fmt: skip
        await wait_until(
            dsn,
            "SELECT progress_current = 3 FROM pgtasks.tasks WHERE id = $1",
            wf.nodes["slow"], fleet=fleet,
        )  # fmt: skip
        shown = cli(dsn, "workflow", str(int(wf)))
        await c.cancel_workflow(wf)
    assert shown.returncode == 0, shown.stderr
    lines = {
        node: [line for line in shown.stdout.splitlines() if f" #{tid} " in line]
        for node, tid in wf.nodes.items()
    }
    assert all(len(found) == 1 for found in lines.values()), shown.stdout
    first, slow, last = (lines[n][0] for n in ("first", "slow", "last"))
    assert "DONE" in first and "%" not in first
    assert "RUNNING" in slow and "75%" in slow, shown.stdout
    assert "WAITING" in last and "%" not in last
    assert "(1/3 done)" in shown.stdout.splitlines()[0]


async def test_http_api_shows_and_cancels_a_workflow(dsn):
    from tests.web.test_api import api

    async with Client(dsn) as c:
        wf = await c.submit(chain(task_node("wf.item", {"i": 1}), task_node("wf.collect")))
    async with api(dsn) as http:
        got = (await http.get(f"/api/workflows/{int(wf)}")).json()
        assert (got["state"], got["total"], got["waiting"], got["pending"]) == ("running", 2, 1, 1)
        assert [n["node"] for n in got["nodes"]] == ["wf.item", "wf.collect"]
        r = await http.post(f"/api/workflows/{int(wf)}/cancel")
        assert r.status_code == 200 and r.json() == {"id": int(wf), "cancelled": 2}
        assert (await http.get("/api/workflows/424242")).status_code == 404
        assert (await http.post("/api/workflows/424242/cancel")).status_code == 404
