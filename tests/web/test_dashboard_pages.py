"""The dashboard's pages, login and bulk endpoints through httpx against the real app and a
real database (the browser tests, test_dashboard_browser.py, drive the same pages live)."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator

import asyncpg
import httpx
from fastapi import FastAPI

import tests.apps.web  # noqa: F401  (registers web_steps)
from pgtasks import Client
from pgtasks.fastapi import lifespan
from pgtasks.web import router
from pgtasks.web.dashboard import dashboard_router
from pgtasks.web.dashboard.views import layout, relative
from tests.web.test_api import TOKEN, api


async def fail_some(dsn: str, n: int, task_type: str = "noop", error: str = "boom") -> list[int]:
    """n FAILED tasks, failed through the real SQL API (claim, then fail_task)."""
    async with Client(dsn) as c:
        ids = await c.submit_many(task_type, [{"i": i} for i in range(n)], max_retries=0)
        async with c.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, lease_token FROM pgtasks.claim_tasks('w', NULL, $1, "
                "interval '1 min', ARRAY[$2])",
                n,
                task_type,
            )
            for r in rows:
                await conn.execute(
                    "SELECT pgtasks.fail_task(task_id => $1, lease_token => $2, error => $3, "
                    "traceback => $4, retryable => false)",
                    r["id"],
                    r["lease_token"],
                    f"{error}\nsecond line",
                    'Traceback (most recent call last):\n  File "x.py"\nValueError: boom',
                )
    return ids


async def test_every_page_renders(dsn):
    await fail_some(dsn, 3)
    async with Client(dsn) as c:
        await c.submit("web_steps", {"steps": 1}, queue="q2")
        await c.create_schedule("nightly", "noop", cron="0 3 * * *")
    async with api(dsn) as http:
        for path, needle in [
            ("/", "Throughput"),
            ("/tasks", "web_steps"),
            ("/tasks?status=FAILED", "boom"),
            ("/tasks?order=ready", "web_steps"),
            ("/tasks?q=boom", "noop"),
            ("/failed", "Retry 3"),
            ("/queues", "Save limits"),
            ("/schedules", "nightly"),
            ("/workflows", "Workflows"),
        ]:
            r = await http.get(path)
            assert r.status_code == 200, (path, r.text)
            assert needle in r.text, path
        r = await http.get("/tasks?q=%231")
        assert r.status_code == 303 and r.headers["location"] == "/tasks/1"
        r = await http.get("/tasks/1")
        assert "Traceback (most recent call last)" in r.text and "Retry task" in r.text
        assert "Send event" not in r.text  # it failed: it waits for no event
        assert (await http.get("/tasks/999999")).status_code == 404
        r = await http.get("/static/dashboard.js")
        assert r.status_code == 200 and "EventSource" in r.text
        assert (await http.get("/static/../routes.py")).status_code == 404


async def test_a_task_page_shows_its_events_and_waits(dsn):
    async with Client(dsn) as c:
        sent = await c.submit("noop")
        await c.send_event(sent, "approved", {"by": "ann"})
        waiting = await c.submit("noop")
    conn = await asyncpg.connect(dsn)
    try:
        claimed = await conn.fetch(
            "SELECT id, lease_token FROM pgtasks.claim_tasks('w', max_tasks => 2)"
        )
        states = {
            r["id"]: await conn.fetchval(
                "SELECT state FROM pgtasks.wait_for_event($1, $2, 'approved', interval '1 hour')",
                r["id"],
                r["lease_token"],
            )
            for r in claimed
        }
    finally:
        await conn.close()
    assert states == {sent: "received", waiting: "waiting"}
    async with api(dsn) as http:
        page = (await http.get(f"/tasks/{sent}")).text
        assert '<strong>approved</strong> <span class="small muted">sent by' in page
        assert "ann" in page
        page = (await http.get(f"/tasks/{waiting}")).text
        assert "waiting for <strong>approved</strong>" in page
        assert "waiting for event approved until" in page  # the history's note
        assert f'data-url="/api/tasks/{waiting}/events/"' in page and "Send event" in page


async def test_waiting_tasks_are_counted_on_the_cards(dsn):
    """WAITING tasks (parents unfinished) have a count on the overview's cards, in its live
    stream and on the queues page, and a queue holding nothing but them gets its card."""
    async with Client(dsn) as c:
        parent = await c.submit("noop", {}, queue="first")
        kids = [await c.submit("noop", {}, queue="parked", depends_on=[parent]) for _ in "abc"]
        assert (await c.get(parent)).status == "PENDING"
    async with api(dsn) as http:
        page = (await http.get("/")).text
        card = page.split('qcard" data-queue="parked"')[1].split("</article>")[0]
        assert '<dt>waiting</dt><dd data-field="waiting_on_parents">3</dd>' in card
        assert '<dd data-field="ready">0</dd>' in card
        first = page.split('data-queue="first"')[1].split("</article>")[0]
        assert '<dd data-field="waiting_on_parents">0</dd>' in first
        assert '"queue": "parked"' in page and '"waiting_on_parents": 3' in page  # the JSON
        queues = (await http.get("/queues")).text
        assert "running 0 · waiting 3 · failed 0" in queues.split('data-queue="parked"')[1]
        listed = (await http.get("/tasks?status=WAITING")).text
        assert listed.count('data-task="') == 3
        # A WAITING task can be cancelled from its page, as from the API and the bulk action.
        assert (
            f'data-url="/api/tasks/{kids[0]}/cancel"' in (await http.get(f"/tasks/{kids[0]}")).text
        )
        r = await http.post(f"/api/tasks/{kids[0]}/cancel")
        assert r.status_code == 200 and r.json()["previous_status"] == "WAITING"


async def test_task_list_filters_and_keyset_pages(dsn):
    async with Client(dsn) as c:
        await c.submit_many("noop", [{"i": i} for i in range(60)], queue="bulk")
        await c.submit("other", {}, queue="solo")
    async with api(dsn) as http:
        page = (await http.get("/tasks?queue=bulk")).text
        assert page.count('data-task="') == 50 and "solo" not in page.split("<tbody>")[1]
        after = re.search(r'after=(\d+)" rel="next"', page)
        assert after is not None
        rest = (await http.get(f"/tasks?queue=bulk&after={after.group(1)}")).text
        assert rest.count('data-task="') == 10 and 'rel="next"' not in rest
        only = (await http.get("/tasks?task_type=other")).text
        assert only.count('data-task="') == 1
        assert "Cancel all matching" in only and '"task_type": "other"' in only
        assert "Cancel all matching" not in (await http.get("/tasks")).text


async def test_bulk_retry_and_cancel(dsn):
    ids = await fail_some(dsn, 5)
    other = await fail_some(dsn, 2, error="other error")
    async with api(dsn) as http:
        r = await http.post("/api/tasks/retry", json={"ids": ids[:2]})
        assert r.status_code == 200 and r.json() == {"count": 2, "ids": ids[:2]}
        r = await http.post(
            "/api/tasks/retry", json={"filter": {"status": "FAILED", "error": "boom"}}
        )
        assert r.json()["ids"] == ids[2:]
        r = await http.post("/api/tasks/cancel", json={"filter": {"status": "PENDING"}})
        assert r.json()["count"] == 5
        assert (await http.post("/api/tasks/retry", json={})).status_code == 422
        groups = (await http.get("/failed")).text
        assert "other error" in groups and "Retry 2" in groups
    async with Client(dsn) as c:
        assert {(await c.get(i)).status for i in ids} == {"CANCELLED"}
        assert {(await c.get(i)).status for i in other} == {"FAILED"}


async def test_queue_limits_and_schedule_actions(dsn):
    async with Client(dsn) as c:
        await c.submit("noop", {}, queue="mail")
        await c.create_schedule("tick", "noop", every=3600)
    async with api(dsn) as http:
        r = await http.put("/api/queues/mail/settings", json={"max_running": 3})
        assert r.status_code == 200 and r.json()["max_running"] == 3
        assert "3 running" in (await http.get("/")).text
        assert (await http.post("/api/queues/mail/pause")).status_code == 200
        assert "Resume mail" in (await http.get("/queues")).text
        assert (await http.post("/api/schedules/tick/pause")).json()["paused"] is True
        assert (await http.post("/api/schedules/tick/resume")).json()["paused"] is False
        assert (await http.post("/api/schedules/tick/trigger")).json()["task_id"] >= 1


async def test_token_login_cookie_and_read_only(dsn):
    async with api(dsn, api_token=TOKEN) as http:
        r = await http.get("/tasks?status=FAILED")
        assert r.status_code == 303
        assert r.headers["location"] == "/login?next=/tasks%3Fstatus%3DFAILED"
        assert (await http.get("/stream/overview")).status_code == 401
        r = await http.post("/login", content="token=wrong&next=/tasks", headers=FORM)
        assert r.status_code == 401 and "not this server" in r.text
        r = await http.post("/login", content=f"token={TOKEN}&next=/tasks", headers=FORM)
        assert r.status_code == 303 and r.headers["location"] == "/tasks"
        cookie = r.cookies["pgtasks_dashboard"]
        assert TOKEN not in cookie and "httponly" in r.headers["set-cookie"].lower()
        assert (await http.get("/tasks")).status_code == 200  # the cookie is kept
        # The API itself still wants the bearer token: the cookie is no API credential.
        assert (await http.post("/api/tasks/1/cancel")).status_code == 401
        r = await http.post("/login", content=f"token={TOKEN}&next=https://evil.example/",
                            headers=FORM)  # fmt: skip
        assert r.headers["location"] == "/"
    await fail_some(dsn, 1)
    async with api(dsn, dashboard_read_only=True) as http:
        page = (await http.get("/tasks/1")).text
        assert "Retry task" not in page and "read-only" in page
        assert "Retry 1" not in (await http.get("/failed")).text


FORM = {"content-type": "application/x-www-form-urlencoded"}


@contextlib.asynccontextmanager
async def mounted(dsn: str) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI(lifespan=lifespan(dsn))
    app.include_router(router(), prefix="/admin/jobs/api")
    app.include_router(dashboard_router(), prefix="/admin/jobs")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            yield http


async def test_mounted_under_a_prefix(dsn):
    await fail_some(dsn, 1)
    async with mounted(dsn) as http:
        page = (await http.get("/admin/jobs/tasks/1")).text
        assert 'data-base="/admin/jobs"' in page and 'data-api="/admin/jobs/api"' in page
        assert 'href="/admin/jobs/static/dashboard.css' in page
        assert 'data-url="/admin/jobs/api/tasks/1/retry"' in page
        assert (await http.post("/admin/jobs/api/tasks/1/retry")).status_code == 200


async def test_an_unknown_workflow_is_a_404_page(dsn):
    async with api(dsn) as http:
        r = await http.get("/workflows/999")
        assert r.status_code == 404 and "no workflow 999" in r.text
        r = await http.get("/workflows")
        assert r.status_code == 200 and "No workflow yet" in r.text


def test_graph_layout_puts_children_right_of_their_parents():
    rows = [
        {"task_id": 1, "node": "fetch", "task_type": "t", "status": "DONE", "parent_ids": []},
        {"task_id": 2, "node": "a", "task_type": "t", "status": "RUNNING", "parent_ids": [1],
         "progress_current": 1, "progress_total": 4},
        {"task_id": 3, "node": "b", "task_type": "t", "status": "PENDING", "parent_ids": [1]},
        {"task_id": 4, "node": "join", "task_type": "t", "status": "PENDING",
         "parent_ids": [2, 3]},
    ]  # fmt: skip
    g = layout(rows)
    x = {n.name: n.x for n in g.nodes}
    assert x["fetch"] < x["a"] == x["b"] < x["join"]
    assert len(g.edges) == 4 and next(n for n in g.nodes if n.name == "a").percent == 25


def test_relative_times():
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert relative(now - timedelta(minutes=3, seconds=5), now) == "3 min ago"
    assert relative(now + timedelta(seconds=20), now) == "in 20 s"
    assert relative(now, now) == "just now"


async def test_failed_groups_by_fingerprint_and_retry_the_group(dsn):
    """26 bounced e-mails, each naming its own address, id and time, are one group; the
    group's retry (by fingerprint) takes all 26 and no other failure."""
    async with Client(dsn) as c:
        ids = await c.submit_many("mailer", [{"i": i} for i in range(26)], max_retries=0)
        lone = await c.submit("mailer", {}, max_retries=0)
        async with c.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, lease_token FROM pgtasks.claim_tasks('w', NULL, 100)"
            )
            for n, r in enumerate(rows):
                error = (
                    "TimeoutError: no answer from db at 10.0.0.7:5432"
                    if r["id"] == lone
                    else f"SMTPRecipientRefused: 550 user{n}@example.com rejected (id "
                    f"'{r['id']:x}', 0x{n + 4096:x}) after {n}.5 s"
                )
                await conn.execute(
                    "SELECT pgtasks.fail_task($1, $2, $3, retryable => false)",
                    r["id"], r["lease_token"], error,
                )  # fmt: skip
            fp = await conn.fetchval(
                "SELECT pgtasks.error_fingerprint('SMTPRecipientRefused: 550 a.b@x.org "
                "rejected (id ''ff'', 0x1000) after 2.5 s\nTraceback')"
            )
        assert fp == "SMTPRecipientRefused: <n> <email> rejected (id ?, <hex>) after <n> s"
        groups = await c.failed_groups()
        assert sorted((g["fingerprint"], g["tasks"]) for g in groups) == [
            (fp, 26),
            ("TimeoutError: no answer from db at <ip>", 1),
        ]
    async with api(dsn) as http:
        page = (await http.get("/failed")).text
        assert "Retry 26" in page and "&lt;email&gt;" in page
        r = await http.post(
            "/api/tasks/retry",
            json={"filter": {"status": "FAILED", "task_type": "mailer", "fingerprint": fp}},
        )
        assert r.status_code == 200 and sorted(r.json()["ids"]) == sorted(ids)
    async with Client(dsn) as c:
        assert (await c.get(lone)).status == "FAILED"


async def test_a_task_page_shows_its_parent_and_its_children(dsn):
    async with Client(dsn) as c:
        parent = await c.submit("fan")
    conn = await asyncpg.connect(dsn)
    try:
        (p,) = await conn.fetch(
            "SELECT id, lease_token FROM pgtasks.claim_tasks('w', max_tasks => 1)"
        )
        kids = await conn.fetchval(
            "SELECT pgtasks.spawn_children($1, $2, 'resize-all',"
            " '[{\"type\": \"resize\"}, {\"type\": \"resize\"}]')",
            p["id"], p["lease_token"],
        )  # fmt: skip
        (k,) = await conn.fetch(
            "SELECT id, lease_token FROM pgtasks.claim_tasks('w', max_tasks => 1)"
        )
        await conn.execute("SELECT pgtasks.finish_task($1, $2)", k["id"], k["lease_token"])
    finally:
        await conn.close()
    assert p["id"] == parent and k["id"] == kids[0]
    async with api(dsn) as http:
        page = (await http.get(f"/tasks/{parent}")).text
        rows = re.findall(r'<tr data-child="(\d+)">(.*?)</tr>', page, re.S)
        assert [int(i) for i, _ in rows] == kids
        assert "resize-all #1" in rows[0][1] and "DONE" in rows[0][1]
        assert "resize-all #2" in rows[1][1] and "PENDING" in rows[1][1]
        assert f"2 tasks spawned by task {parent}, in spawn order" in page
        child = (await http.get(f"/tasks/{kids[1]}")).text
        assert f'<a href="/tasks/{parent}" data-field="parent">task {parent}</a>' in child
        assert 'id="h-children"' not in child  # no children of its own
        detail = (await http.get(f"/api/tasks/{kids[1]}")).json()
        assert detail["spawned_by"] == parent
        listed = (await http.get(f"/api/tasks/{parent}/children")).json()
        assert [(c["child_id"], c["status"]) for c in listed] == [
            (kids[0], "DONE"), (kids[1], "PENDING")
        ]  # fmt: skip
        assert (await http.get(f"/api/tasks/{kids[1]}/children")).json() == []


async def test_overview_charts_come_from_the_roll_up(dsn, conn: asyncpg.Connection):
    await conn.fetchval("SELECT pgtasks.roll_up()")
    await fail_some(dsn, 2)
    await conn.execute("SELECT pgtasks.advance_clock(interval '20 seconds')")
    await conn.fetchval("SELECT pgtasks.roll_up()")
    async with api(dsn) as http:
        page = (await http.get("/")).text
        data = re.search(r'id="overview-data">(.*?)</script>', page, re.S)
        assert data is not None
        chart = json.loads(data.group(1))["chart"]
        assert chart["span"] == "5m" and len(chart["buckets"]) == 30
        assert sum(b["failed"] or 0 for b in chart["buckets"]) == 2
        assert 'aria-pressed="true">5 min' in page
        for span, points in (("5m", 30), ("1h", 360), ("24h", 288)):
            r = await http.get("/charts", params={"span": span})
            assert r.status_code == 200 and r.headers["content-type"] == "application/json"
            buckets = r.json()["buckets"]
            assert len(buckets) == points and sum(b["failed"] or 0 for b in buckets) == 2
        r = await http.get("/charts", params={"span": "1y"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    async with api(dsn, api_token=TOKEN) as http:
        assert (await http.get("/charts")).status_code == 401


async def test_task_times_show_durations_and_the_next_retry(dsn, conn: asyncpg.Connection):
    """The exact time of every relative one on hover, how long the task waited and ran,
    and a retrying task's next retry: its run_at as the database set it."""
    async with Client(dsn) as c:
        done = await c.submit("noop", {}, max_retries=3)
        retrying = await c.submit("noop", {}, max_retries=3)
    await conn.execute("SELECT pgtasks.advance_clock(interval '4 seconds')")
    claimed = await conn.fetch(
        "SELECT id, lease_token FROM pgtasks.claim_tasks('w', NULL, 2, interval '1 min')"
    )
    tokens = {r["id"]: r["lease_token"] for r in claimed}
    await conn.execute("SELECT pgtasks.advance_clock(interval '90 seconds')")
    await conn.execute("SELECT pgtasks.finish_task($1, $2)", done, tokens[done])
    await conn.execute(
        "SELECT pgtasks.fail_task(task_id => $1, lease_token => $2, error => 'later')",
        retrying,
        tokens[retrying],
    )
    run_at = await conn.fetchval("SELECT run_at FROM pgtasks.tasks WHERE id = $1", retrying)
    async with api(dsn) as http:
        page = (await http.get(f"/tasks/{done}")).text
        assert re.search(r'<dt>waited ready</dt><dd data-field="waited"><span class="dur" '
                         r'title="4\.\d+ s">4\.\d s</span>', page), page  # fmt: skip
        assert re.search(r'<dt>ran</dt><dd data-field="ran"><span class="dur" '
                         r'title="9\d\.\d+ s">1 min 3\d s</span>', page)  # fmt: skip
        for m in re.finditer(r"<time ([^>]*)>", page):  # every relative time has its exact one
            assert re.search(r'datetime="[^"]+" title="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"', m[1])
        page = (await http.get(f"/tasks/{retrying}")).text
        assert "<dt>next retry</dt>" in page
        tag = re.search(r'<dd data-field="next-run"><time datetime="([^"]+)"', page)
        assert tag is not None and tag[1] == run_at.isoformat()
        listing = (await http.get("/tasks")).text
        assert f'retry <time datetime="{run_at.isoformat()}"' in listing
