"""The database's task counters, the queue settings series and /metrics mounted through
router(), against a real database; the alert rules and the real /metrics output through
promtool (Debian's `prometheus` package), against a real `pgtasks serve`."""

from __future__ import annotations

import shutil
import subprocess
from datetime import timedelta

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from pgtasks import Client
from pgtasks.fastapi import lifespan
from pgtasks.web import WebSettings, router
from tests.conftest import ROOT
from tests.web.serving import serve

RULES = ROOT / "deploy" / "prometheus" / "pgtasks-rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "pgtasks-rules.test.yml"


async def counters(conn: asyncpg.Connection) -> dict[tuple[str, str, str], int]:
    rows = await conn.fetch("SELECT queue, task_type, kind, total FROM pgtasks.task_counters")
    return {(r["queue"], r["task_type"], r["kind"]): r["total"] for r in rows}


async def claim(
    conn: asyncpg.Connection, queue: str, lease: timedelta = timedelta(minutes=1)
) -> tuple[int, str]:
    (row,) = await conn.fetch(
        "SELECT * FROM pgtasks.claim_tasks('w1', max_tasks => 1, queues => ARRAY[$1], lease => $2)",
        queue,
        lease,
    )
    return row["id"], row["lease_token"]


async def test_counters_count_every_kind_and_survive_folding_and_pruning(conn):
    q = "counted"
    sub = "SELECT pgtasks.submit_task('job', '{}', queue => $1, max_retries => $2)"
    await conn.fetchval(sub, q, 3)
    # Retried once (a retryable failure), then done.
    tid, token = await claim(conn, q)
    await conn.execute("SELECT pgtasks.fail_task($1, $2, 'boom', retry_delay => '0')", tid, token)
    tid, token = await claim(conn, q)
    await conn.execute("SELECT pgtasks.finish_task($1, $2)", tid, token)
    # Failed for good, then requeued by an operator, then cancelled.
    other = await conn.fetchval(sub, q, 0)
    tid, token = await claim(conn, q)
    assert tid == other
    await conn.execute("SELECT pgtasks.fail_task($1, $2, 'bad', retryable => false)", tid, token)
    await conn.execute("SELECT pgtasks.retry_task($1)", other)
    await conn.execute("SELECT pgtasks.cancel_task($1)", other)
    # Rescued: its lease runs out; it has a retry left, so it is retried as well.
    third = await conn.fetchval(sub, q, 3)
    tid, _ = await claim(conn, q, lease=timedelta(seconds=1))
    assert tid == third
    await conn.execute("SELECT pgtasks.advance_clock('10 seconds')")
    assert await conn.fetchval("SELECT pgtasks.rescue_expired()") == 1
    # A batch of five in one statement.
    await conn.execute(
        "SELECT pgtasks.submit_tasks('job', ARRAY(SELECT '{}'::jsonb FROM generate_series(1, 5)),"
        " queue => $1)",
        q,
    )
    want = {
        (q, "job", "submitted"): 8,
        (q, "job", "retried"): 2,
        (q, "job", "done"): 1,
        (q, "job", "failed"): 1,
        (q, "job", "requeued"): 1,
        (q, "job", "cancelled"): 1,
        (q, "job", "rescued"): 1,
    }
    assert await counters(conn) == want
    # rescue_expired folded the deltas written before it; maintain() folds the rest.
    await conn.execute("SELECT * FROM pgtasks.maintain()")
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.task_count_deltas") == 0
    folded = await conn.fetch("SELECT queue, task_type, kind, n FROM pgtasks.task_counts")
    assert {(r["queue"], r["task_type"], r["kind"]): r["n"] for r in folded} == want
    assert await counters(conn) == want
    # Pruning deletes the finished tasks, never their counts.
    pruned = await conn.fetchval("SELECT pgtasks.prune_finished(interval '0', 1000)")
    assert pruned == 2
    assert await counters(conn) == want


async def test_a_worker_statement_adds_one_delta_row_per_queue_and_type(conn):
    """What the drain path pays: one row per finish statement, not one per task."""
    await conn.execute(
        "SELECT pgtasks.submit_tasks('job', ARRAY(SELECT '{}'::jsonb FROM generate_series(1, 20)),"
        " queue => 'batch')"
    )
    await conn.execute("SELECT pgtasks.fold_counts()")
    rows = await conn.fetch("SELECT * FROM pgtasks.claim_tasks('w1', max_tasks => 20)")
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.task_count_deltas") == 0
    await conn.fetch(
        "SELECT * FROM pgtasks.finish_tasks($1, $2, $3)",
        [r["id"] for r in rows],
        [r["lease_token"] for r in rows],
        [None] * len(rows),
    )
    deltas = await conn.fetch("SELECT queue, kind, n FROM pgtasks.task_count_deltas")
    assert [tuple(r) for r in deltas] == [("batch", "done", 20)]


async def test_metrics_from_router_with_counters_and_queue_settings(dsn):
    """router(metrics=True) in the user's own app: /metrics under its prefix."""
    async with Client(dsn) as c:
        await c.submit_many("mailer.send", [{}, {}], queue="mail")
        await c.pause_queue("mail")
        await c.configure_queue(
            "limited", max_running=4, rate_limit=10, rate_period=timedelta(seconds=30)
        )
    app = FastAPI(lifespan=lifespan(dsn))
    app.include_router(router(metrics=True, settings=WebSettings()), prefix="/ops/tasks")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            r = await http.get("/ops/tasks/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    fams = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert fams["pgtasks_tasks_submitted"].type == "counter"
    submitted = {
        (s.labels["queue"], s.labels["task_type"]): s.value
        for s in fams["pgtasks_tasks_submitted"].samples
    }
    assert submitted == {("mail", "mailer.send"): 2}
    finished = {s.labels["status"]: s.value for s in fams["pgtasks_tasks_finished"].samples}
    assert finished == {"DONE": 0, "FAILED": 0, "CANCELLED": 0}
    paused = {s.labels["queue"]: s.value for s in fams["pgtasks_queue_paused"].samples}
    assert paused == {"mail": 1, "limited": 0}
    assert [s.value for s in fams["pgtasks_queue_max_running"].samples] == [4]
    assert [s.value for s in fams["pgtasks_queue_rate_limit"].samples] == [10]
    assert [s.value for s in fams["pgtasks_queue_rate_period_seconds"].samples] == [30]
    assert "pgtasks_live_worker_slots" in fams and "pgtasks_worker_slots" not in fams


async def test_router_metrics_need_the_token_when_reads_do(dsn):
    settings = WebSettings(api_token="s3cret")
    app = FastAPI(lifespan=lifespan(dsn))
    app.include_router(router(metrics=True, settings=settings), prefix="/api")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            assert (await http.get("/api/metrics")).status_code == 401
            ok = await http.get("/api/metrics", headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 200 and "pgtasks_tasks_submitted" in ok.text


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus; .ci/run does)")
    return found


def run_promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], input=stdin, capture_output=True, text=True, cwd=ROOT, check=False
    )


def test_the_shipped_rules_are_valid_and_fire_as_their_tests_say():
    checked = run_promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run_promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_shipped_rule_has_a_test_that_fires_it():
    """A rule no test makes fire could be one that never fires (an `and` between series
    whose labels cannot match)."""
    import yaml

    rules = yaml.safe_load(RULES.read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load(RULE_TESTS.read_text())
    fired = {
        case["alertname"]
        for t in tests["tests"]
        for case in t.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert names and names <= fired, names - fired


@pytest.mark.slow
async def test_promtool_accepts_the_real_metrics_output(dsn):
    promtool()
    async with Client(dsn) as c:
        await c.submit_many("noop", [{}, {}], queue="a")
        await c.pause_queue("a")
        await c.configure_queue("b", max_running=2)
    with serve(dsn) as server:
        text = httpx.get(f"{server.base}/metrics").text
    assert "pgtasks_tasks_submitted_total" in text and "pgtasks_queue_paused" in text
    checked = run_promtool("check", "metrics", stdin=text)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_rules_file_is_where_the_docs_say():
    docs = (ROOT / "docs" / "observability.md").read_text()
    assert str(RULES.relative_to(ROOT)) in docs and RULE_TESTS.exists()


async def test_metrics_show_dead_rows_and_what_holds_the_xmin_horizon(dsn, conn):
    """The table-health and horizon series (pgtasks.table_health, pgtasks.xmin_horizon)
    move with what they measure: cancels leave dead rows, an open REPEATABLE READ
    snapshot holds the horizon while transactions go by, and stops when it ends."""
    app = FastAPI(lifespan=lifespan(dsn))
    app.include_router(router(metrics=True, settings=WebSettings()), prefix="/ops")

    def gauge(text: str, name: str, **labels: str) -> float:
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        return next(s.value for s in fams[name].samples if s.labels == labels)

    async def burn(n: int) -> None:  # n transactions, each with an xid
        for _ in range(n):
            await conn.fetchval("SELECT pg_current_xact_id()")

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as h:

            async def scrape() -> str:
                r = await h.get("/ops/metrics")
                assert r.status_code == 200, r.text
                return r.text

            before = gauge(await scrape(), "pgtasks_table_dead_tuples", table="tasks")
            ids = [await conn.fetchval("SELECT pgtasks.submit_task('noop')") for _ in range(5)]
            for tid in ids:
                await conn.fetchval("SELECT pgtasks.cancel_task($1)", tid)
            # A backend's counts reach the shared statistics once it goes idle.
            await conn.execute("SELECT pg_stat_force_next_flush()")
            text = await scrape()
            assert gauge(text, "pgtasks_table_dead_tuples", table="tasks") >= before + 5, text
            assert gauge(text, "pgtasks_table_live_tuples", table="tasks") >= 5
            assert gauge(text, "pgtasks_table_bytes", table="tasks") > 0
            assert "pgtasks_table_vacuums_total" in text

            holder = await asyncpg.connect(dsn)
            try:
                async with holder.transaction(isolation="repeatable_read"):
                    await holder.fetchval("SELECT 1")  # takes the snapshot: an xmin, no xid
                    await burn(20)
                    held = await scrape()
                    during = gauge(held, "pgtasks_xmin_horizon_age", source="session")
                    assert during >= 20, held
                    assert gauge(held, "pgtasks_xmin_horizon_held_seconds", source="session") > 0
                    await holder.fetchval("SELECT pg_current_xact_id()")  # now an xid too
                    await burn(5)
                    text = await scrape()
                    assert gauge(text, "pgtasks_xmin_horizon_age", source="transaction") >= 5
            finally:
                await holder.close()
            await burn(1)
            after = gauge(await scrape(), "pgtasks_xmin_horizon_age", source="session")
            assert after < during, (after, during)
