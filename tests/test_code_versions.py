"""Code versions: the claim records the claiming worker's version of the type on a task's
first attempt, and later claims take the task only for a worker that serves that version
(the same one, or one it declares compatible). A task no live worker serves is listed in
pgtasks.stranded_tasks (CLI `pgtasks stranded`, GET /api/stranded) instead of running on
the wrong code.

Real workers (in-process, each with its own registry) against a real database; every wait
is for a state in the database, and the timeouts only bound a hung test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from pgtasks import Client, Registry, Worker, task_register
from tests.conftest import wait_for
from tests.sql.helpers import raises


def report_registry(version: str, compatible: tuple[str, ...] = ()) -> Registry:
    """A `report` task of this code version: two checkpointed steps, then a durable sleep
    (the task goes back to COMMIT, checkpointed at step 2), then a last step. Each step
    records which version ran it. `marker` is an unversioned type, to see the worker claim."""
    reg = Registry()

    @task_register("report", version=version, compatible_versions=compatible, into=reg)
    async def report(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
        ran = [await ctx.step(f"step-{i}", lambda: version) for i in (1, 2)]
        await ctx.sleep(3600, name="pause")
        ran.append(await ctx.step("step-3", lambda: version))
        return {"steps": ran}

    @task_register("marker", into=reg)
    async def marker(ctx: Any, params: dict[str, Any]) -> str:
        return version

    return reg


@pytest.fixture
async def client(dsn: str) -> AsyncIterator[Client]:
    async with Client(dsn) as c:
        yield c


async def run_worker(dsn: str, reg: Registry) -> tuple[Worker, asyncio.Task[None]]:
    w = Worker(dsn, registry=reg, poll_interval=0.1, lease=10.0, shutdown_grace=2.0)
    return w, asyncio.create_task(w.run())


async def stop_worker(w: Worker, t: asyncio.Task[None]) -> None:
    w.stop()
    await asyncio.wait_for(t, 30)


@pytest.mark.parametrize(
    ("version", "compatible"),
    [("1", ()), ("2", ("1",))],
    ids=["on-a-version-1-worker", "on-a-version-2-worker-that-accepts-1"],
)
async def test_a_version_1_task_checkpointed_at_step_2_waits_for_a_worker_that_serves_it(
    dsn: str, conn: asyncpg.Connection, client: Client, version: str, compatible: tuple[str, ...]
) -> None:
    task_id = await client.submit("report")
    assert (
        await conn.fetchval("SELECT code_version FROM pgtasks.tasks WHERE id = $1", task_id) is None
    )
    v1 = await run_worker(dsn, report_registry("1"))
    await wait_for(
        conn,
        "SELECT status = 'COMMIT' AND EXISTS (SELECT 1 FROM pgtasks.task_steps s"
        " WHERE s.task_id = t.id AND s.name = 'step-2') FROM pgtasks.tasks t WHERE id = $1",
        task_id,
    )
    await stop_worker(*v1)
    assert (
        await conn.fetchval("SELECT code_version FROM pgtasks.tasks WHERE id = $1", task_id) == "1"
    )
    await conn.execute("SELECT pgtasks.advance_clock(interval '1 hour')")  # the sleep is over

    # A worker of version 2 only: it claims (an unversioned task it runs shows that), but
    # not the version-1 task, which is listed as stranded.
    v2 = await run_worker(dsn, report_registry("2"))
    marker = await client.submit("marker")
    assert await client.wait(marker, timeout=60) == "2"
    assert (
        await conn.fetchval("SELECT status FROM pgtasks.tasks WHERE id = $1", task_id) == "COMMIT"
    )
    stranded = await client.stranded()
    assert [(r["id"], r["code_version"], r["live_versions"]) for r in stranded] == [
        (task_id, "1", ["2"])
    ]
    # A fresh task goes to the version-2 worker and is recorded as version 2.
    fresh = await client.submit("report")
    await wait_for(conn, "SELECT code_version = '2' FROM pgtasks.tasks WHERE id = $1", fresh)
    await stop_worker(*v2)

    serving = await run_worker(dsn, report_registry(version, compatible))
    result = await client.wait(task_id, timeout=60)
    # Steps 1 and 2 came from the checkpoints of version 1; step 3 ran on this worker.
    assert result == {"steps": ["1", "1", version]}
    assert (
        await conn.fetchval("SELECT code_version FROM pgtasks.tasks WHERE id = $1", task_id) == "1"
    )
    assert task_id not in [r["id"] for r in await client.stranded()]
    await stop_worker(*serving)


async def test_register_worker_checks_the_versions(conn: asyncpg.Connection) -> None:
    register = (
        "SELECT pgtasks.register_worker('w', 'h', 1, code_versions => $1,"
        " compatible_versions => $2)"
    )
    for runs, compatible in [
        (["report"], None),  # no version
        (["report@"], None),
        (["report@1 2"], None),  # a blank in the version
        (["report@1", "report@2"], None),  # two running versions of one type
        (None, ["report@" + "9" * 65]),
        ([None], None),
    ]:
        await raises(conn, register, "PT130", runs, compatible)
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.worker_registry") == 0
    await conn.execute(register, ["a@b@2", "report@2"], ["report@1"])
    versions = await conn.fetchrow("SELECT (pgtasks.worker_versions('w')).*")
    assert versions["served"] == ["a@b@2", "report@2", "report@1"]
    assert versions["run_types"] == ["a@b", "report"]
    assert versions["run_versions"] == ["2", "2"]


async def test_a_claim_from_psql_takes_only_unversioned_tasks(conn: asyncpg.Connection) -> None:
    """A claimer without a registry row (psql, a script) serves no version: it may start a
    task (recording nothing) but not resume one a versioned worker started."""
    await conn.execute(
        "SELECT pgtasks.register_worker('v1', 'h', 1, code_versions => ARRAY['report@1'])"
    )
    a = await conn.fetchval("SELECT pgtasks.submit_task('report')")
    b = await conn.fetchval("SELECT pgtasks.submit_task('report')")
    claimed = await conn.fetchrow("SELECT * FROM pgtasks.claim_tasks('v1')")
    assert claimed["id"] == a
    await conn.execute(
        "SELECT pgtasks.yield_task($1, $2, now())", claimed["id"], claimed["lease_token"]
    )
    psql = await conn.fetch("SELECT id FROM pgtasks.claim_tasks('psql', max_tasks => 10)")
    assert [r["id"] for r in psql] == [b]
    codes = await conn.fetch("SELECT id, code_version FROM pgtasks.tasks ORDER BY id")
    assert [tuple(r) for r in codes] == [(a, "1"), (b, None)]
    # finish_and_claim filters and records the same way.
    rows = await conn.fetch(
        "SELECT * FROM pgtasks.finish_and_claim('v1', '{}', '{}', '{}', claim_max => 10)"
    )
    assert [r["id"] for r in rows] == [a]


async def test_stranded_tasks_show_in_the_api_and_on_the_dashboard(
    dsn: str, conn: asyncpg.Connection
) -> None:
    from tests.web.test_api import api

    await conn.execute(
        "SELECT pgtasks.register_worker('v1', 'h', 1, code_versions => ARRAY['report@1'])"
    )
    task_id = await conn.fetchval("SELECT pgtasks.submit_task('report')")
    claimed = await conn.fetchrow("SELECT * FROM pgtasks.claim_tasks('v1')")
    await conn.execute("SELECT pgtasks.yield_task($1, $2, now())", task_id, claimed["lease_token"])
    async with api(dsn) as http:
        assert (await http.get("/api/stranded")).json() == []  # v1 is alive: it serves it
        await conn.execute("SELECT pgtasks.unregister_worker('v1')")
        await conn.execute(
            "SELECT pgtasks.register_worker('v2', 'h', 2, code_versions => ARRAY['report@2'])"
        )
        r = await http.get("/api/stranded")
        assert r.status_code == 200, r.text
        assert [(s["id"], s["code_version"], s["live_versions"]) for s in r.json()] == [
            (task_id, "1", ["2"])
        ]
        assert (await http.get("/api/stranded?limit=0")).status_code == 422
        page = (await http.get("/")).text
        section = page.split('id="stranded"')[1].split("</table>")[0]
        assert f'/tasks/{task_id}">{task_id}</a>' in section and "<td>1</td>" in section


@pytest.mark.slow
async def test_pgtasks_stranded_lists_them(dsn: str, conn: asyncpg.Connection) -> None:
    from tests.test_cli import cli

    await conn.execute(
        "SELECT pgtasks.register_worker('v1', 'h', 1, code_versions => ARRAY['report@1'])"
    )
    task_id = await conn.fetchval("SELECT pgtasks.submit_task('report')")
    claimed = await conn.fetchrow("SELECT * FROM pgtasks.claim_tasks('v1')")
    await conn.execute("SELECT pgtasks.yield_task($1, $2, now())", task_id, claimed["lease_token"])
    await conn.execute("SELECT pgtasks.unregister_worker('v1')")
    out = await asyncio.to_thread(cli, dsn, "stranded")
    assert out.returncode == 0, out.stderr
    assert "stranded tasks (1)" in out.stdout and str(task_id) in out.stdout, out.stdout
    assert "(none)" in out.stdout  # no live worker runs a version of report
