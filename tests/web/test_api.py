"""The HTTP API through httpx against the real app and a real database."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

import tests.apps.web  # noqa: F401  (registers web_steps)
from pgtasks import Client, Worker
from pgtasks.web import WebSettings, create_app, router

TOKEN = "s3cret"


@contextlib.asynccontextmanager
async def api(dsn: str, **settings: object) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(WebSettings(database_url=dsn, **settings))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            yield http


@pytest.fixture
async def http(dsn: str) -> AsyncIterator[httpx.AsyncClient]:
    async with api(dsn) as h:
        yield h


def sse(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((fields["event"], json.loads(fields["data"])))
    return out


async def test_submit_get_list_and_pages(http: httpx.AsyncClient):
    r = await http.post("/api/tasks", json={"task_type": "noop", "params": {"x": 1}})
    assert r.status_code == 201, r.text
    first = r.json()["id"]
    assert r.headers["location"] == f"tasks/{first}"
    for i in range(4):
        r = await http.post(
            "/api/tasks", json={"task_type": "other", "params": {"i": i}, "queue": "q2"}
        )
        assert r.status_code == 201
    detail = (await http.get(f"/api/tasks/{first}")).json()
    assert detail["status"] == "PENDING" and detail["params"] == {"x": 1}
    assert detail["errors"] == [] and detail["steps"] == []

    page = (await http.get("/api/tasks", params={"page_size": 2})).json()
    assert page["total"] == 5 and page["page"] == 1 and len(page["items"]) == 2
    assert page["items"][0]["id"] > page["items"][1]["id"]
    page3 = (await http.get("/api/tasks", params={"page_size": 2, "page": 3})).json()
    assert [t["id"] for t in page3["items"]] == [first]
    beyond = (await http.get("/api/tasks", params={"page_size": 2, "page": 9})).json()
    assert beyond["total"] == 5 and beyond["items"] == []
    oldest = (await http.get("/api/tasks", params={"order": "oldest", "page_size": 1})).json()
    assert oldest["items"][0]["id"] == first
    q2 = (await http.get("/api/tasks", params={"queue": "q2", "status": "PENDING"})).json()
    assert q2["total"] == 4
    by_type = (await http.get("/api/tasks", params={"task_type": "noop"})).json()
    assert by_type["total"] == 1

    queues = {q["queue"]: q for q in (await http.get("/api/queues")).json()}
    assert queues["q2"]["pending"] == 4 and queues["q2"]["ready"] == 4
    assert isinstance(queues["q2"]["oldest_ready_age"], float)


async def test_a_done_task_shows_its_last_attempt_and_list_items_carry_no_result(
    http: httpx.AsyncClient, conn: asyncpg.Connection
):
    """Failed once, then DONE: no `error` on the task (the failure is in `errors`), and a
    list item has no `result` rather than a `null` that reads as "no result"."""
    tid = await conn.fetchval("SELECT pgtasks.submit_task('noop', max_retries => 1)")
    claim = "SELECT lease_token FROM pgtasks.claim_tasks('w1', max_tasks => 1)"
    await conn.execute("SELECT pgtasks.fail_task($1, $2, 'e1')", tid, await conn.fetchval(claim))
    await conn.execute("UPDATE pgtasks.tasks SET run_at = now() WHERE id = $1", tid)
    await conn.execute(
        "SELECT pgtasks.finish_task($1, $2, '{\"n\": 1}')", tid, await conn.fetchval(claim)
    )
    detail = (await http.get(f"/api/tasks/{tid}")).json()
    assert (detail["status"], detail["error"], detail["result"]) == ("DONE", None, {"n": 1})
    assert [e["error"] for e in detail["errors"]] == ["e1"]
    (item,) = (await http.get("/api/tasks")).json()["items"]
    assert item["status"] == "DONE" and item["error"] is None and "result" not in item


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"task_type": "noop", "bogus": 1}, "body.bogus"),
        ({"task_type": "noop", "params": [1, 2]}, "body.params"),
        ({"task_type": "noop", "params": "x"}, "body.params"),
        ({"params": {}}, "body.task_type"),
        ({"task_type": ""}, "body.task_type"),
        ({"task_type": "noop", "priority": 2**40}, "body.priority"),
        ({"task_type": "noop", "delay_s": -1}, "body.delay_s"),
        ({"task_type": "noop", "max_retries": -1}, "body.max_retries"),
    ],
)
async def test_bad_submits_are_422_naming_the_field_and_write_nothing(dsn, http, body, field):
    r = await http.post("/api/tasks", json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and err["message"].startswith(field)
    assert (await http.get("/api/tasks")).json()["total"] == 0


async def test_database_refusals_keep_their_code_and_hint(http: httpx.AsyncClient):
    r = await http.post("/api/tasks", json={"task_type": "noop", "max_retries": 5000})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"].startswith("PT1") and err["hint"]
    assert (await http.get("/api/tasks")).json()["total"] == 0
    r = await http.post(
        "/api/tasks", json={"task_type": "noop", "delay_s": 1, "run_at": "2030-01-01T00:00:00Z"}
    )
    assert r.status_code == 422 and "run_at or delay_s" in r.json()["error"]["message"]


async def test_unknown_ids_and_bad_queries(http: httpx.AsyncClient):
    r = await http.get("/api/tasks/999999")
    assert r.status_code == 404 and r.json()["error"]["code"] == "PT003"
    for path in ("/api/tasks/999999/cancel", "/api/tasks/999999/retry"):
        r = await http.post(path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "PT003"
    assert (await http.get("/api/tasks/999999/events")).status_code == 404
    assert (await http.get("/api/tasks/0")).status_code == 422
    r = await http.get("/api/tasks/abc")  # no route takes a non-numeric id
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    for params in ({"status": "nope"}, {"page": 0}, {"page_size": 501}, {"order": "x"}):
        r = await http.get("/api/tasks", params=params)
        assert r.status_code == 422, params
        assert r.json()["error"]["message"].startswith("query.")
    assert (await http.get("/api/tasks/1/logs", params={"limit": 0})).status_code == 422


async def test_cancel_retry_history_and_conflicts(http: httpx.AsyncClient):
    task_id = (await http.post("/api/tasks", json={"task_type": "noop"})).json()["id"]
    r = await http.post(f"/api/tasks/{task_id}/retry")
    assert r.status_code == 409 and r.json()["error"]["code"] == "PT001"
    r = await http.post(f"/api/tasks/{task_id}/cancel")
    assert r.json() == {"id": task_id, "previous_status": "PENDING"}
    r = await http.post(f"/api/tasks/{task_id}/cancel")
    assert r.status_code == 409 and r.json()["error"]["code"] == "PT004"
    assert (await http.post(f"/api/tasks/{task_id}/retry")).json()["status"] == "PENDING"
    history = (await http.get(f"/api/tasks/{task_id}/history")).json()
    assert [h["to_status"] for h in history] == ["PENDING", "CANCELLED", "PENDING"]


async def test_send_an_event_over_http_and_read_the_inbox(http: httpx.AsyncClient):
    task_id = (await http.post("/api/tasks", json={"task_type": "noop"})).json()["id"]
    r = await http.post(f"/api/tasks/{task_id}/events/approved", json={"by": "ann"})
    assert r.status_code == 200, r.text
    assert r.json() == {"id": task_id, "name": "approved", "delivered": True}
    again = await http.post(f"/api/tasks/{task_id}/events/approved", json={"by": "bob"})
    assert again.json()["delivered"] is False  # the first event is kept
    inbox = (await http.get(f"/api/tasks/{task_id}/inbox")).json()
    assert [(e["name"], e["payload"]) for e in inbox] == [("approved", {"by": "ann"})]
    r = await http.post(f"/api/tasks/{task_id}/events/%20")
    assert r.status_code == 422 and r.json()["error"]["code"] == "PT126"
    r = await http.post("/api/tasks/999999/events/approved")
    assert r.status_code == 404 and r.json()["error"]["code"] == "PT003"
    await http.post(f"/api/tasks/{task_id}/cancel")
    r = await http.post(f"/api/tasks/{task_id}/events/late")
    assert r.status_code == 409 and r.json()["error"]["code"] == "PT128"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/queues/settings", 200),
        ("POST", "/api/queues/default/pause", 200),
        ("POST", "/api/queues/default/resume", 200),
        ("GET", "/api/schedules", 200),
        ("GET", "/api/workflows/1", 404),
        ("POST", "/api/workflows/1/cancel", 404),
    ],
)
async def test_flow_schedule_and_workflow_routes_answer(http, method, path, status):
    """Each is one Client call; an unknown workflow is a 404 with the database's code."""
    r = await http.request(method, path)
    assert r.status_code == status, r.text
    if status == 404:
        assert r.json()["error"]["code"] == "PT508"


async def test_a_unique_key_returns_the_active_task(http):
    body = {"task_type": "noop", "unique_key": "k"}
    first = await http.post("/api/tasks", json=body)
    assert first.status_code == 201 and first.json()["created"] is True
    again = await http.post("/api/tasks", json=body)
    assert again.status_code == 200
    assert again.json() == {"id": first.json()["id"], "created": False}


async def test_an_idempotency_key_is_the_tasks_unique_key(http):
    body = {"task_type": "noop", "idempotency_key": "order-7"}
    first = await http.post("/api/tasks", json=body)
    assert first.status_code == 201 and first.json()["created"] is True
    again = await http.post("/api/tasks", json=body)
    assert again.status_code == 200
    assert again.json() == {"id": first.json()["id"], "created": False}
    found = await http.get("/api/tasks", params={"unique_key": "order-7"})
    assert [t["id"] for t in found.json()["items"]] == [first.json()["id"]]
    for extra, code in (
        ({"unique_key": "order-7"}, "PT100"),
        ({"depends_on": [first.json()["id"]]}, "PT100"),
    ):
        r = await http.post("/api/tasks", json={**body, **extra})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == code, r.json()
    r = await http.post("/api/tasks", json={"task_type": "noop", "idempotency_key": ""})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"


async def test_unique_for_keeps_the_key_taken_after_its_task_ended(http, conn):
    """`unique_for_s` is Client.submit's unique_for: within it, a resend returns the first
    task even though that task has ended; without it the key is free at the task's end."""

    async def submit(body: dict) -> httpx.Response:
        return await http.post("/api/tasks", json={"task_type": "noop", **body})

    async def cancel(task_id: int) -> None:
        assert (await http.post(f"/api/tasks/{task_id}/cancel")).status_code == 200

    held = {"idempotency_key": "order-9", "unique_for_s": 3600}
    first = await submit(held)
    assert first.status_code == 201, first.text
    await cancel(first.json()["id"])
    again = await submit(held)
    assert again.status_code == 200, again.text
    assert again.json() == {"id": first.json()["id"], "created": False}
    # The same with unique_key, and none at all: the key is free once the task ended.
    keyed = await submit({"unique_key": "order-9", "unique_for_s": 3600})
    assert keyed.json() == {"id": first.json()["id"], "created": False}
    plain = await submit({"idempotency_key": "order-10"})
    await cancel(plain.json()["id"])
    free = await submit({"idempotency_key": "order-10"})
    assert free.status_code == 201 and free.json()["id"] != plain.json()["id"]
    # Once the window has passed, the key is free too.
    await conn.execute("SELECT pgtasks.advance_clock(interval '2 hours')")
    late = await submit(held)
    assert late.status_code == 201 and late.json()["id"] != first.json()["id"], late.text

    for bad in (0, -1, "3600", True, 1e300, None):
        r = await submit({"unique_key": "k", "unique_for_s": bad})
        if bad is None:  # null is "no window"
            assert r.status_code == 201, r.text
            continue
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"]["code"] == "invalid_request", r.json()
    # What the database and the client refuse, with their codes and hints.
    for body, code in (
        ({"unique_for_s": 60}, "PT303"),  # a window of no key
        ({"unique_key": "k2", "unique_for_s": 60, "depends_on": [first.json()["id"]]}, "PT100"),
        ({"unique_key": "k2", "depends_on": []}, "PT100"),
    ):
        r = await submit(body)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == code and r.json()["error"]["hint"], r.json()
    schema = (await http.get("/openapi.json")).json()["components"]["schemas"]["SubmitRequest"]
    window = schema["properties"]["unique_for_s"]["anyOf"][0]
    assert window["minimum"] > 0 and window["maximum"] == 100 * 365 * 86400, window


async def test_auth_closes_writes_and_reads_unless_opened(dsn):
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with api(dsn, api_token=TOKEN) as h:
        r = await h.post("/api/tasks", json={"task_type": "noop"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "unauthorized"
        wrong = {"Authorization": "Bearer nope"}
        assert (
            await h.post("/api/tasks", json={"task_type": "noop"}, headers=wrong)
        ).status_code == 401
        assert (await h.get("/api/tasks")).status_code == 401
        assert (await h.get("/api/workers")).status_code == 401
        r = await h.post("/api/tasks", json={"task_type": "noop"}, headers=bearer)
        assert r.status_code == 201
        assert (await h.get("/api/tasks", headers=bearer)).json()["total"] == 1
    async with api(dsn, api_token=TOKEN, api_open_reads=True) as h:
        assert (await h.get("/api/tasks")).json()["total"] == 1
        task_id = (await h.get("/api/tasks")).json()["items"][0]["id"]
        assert (await h.post(f"/api/tasks/{task_id}/cancel")).status_code == 401
        assert (await h.post(f"/api/tasks/{task_id}/cancel", headers=bearer)).status_code == 200


async def test_sse_streams_progress_logs_and_final_status_in_order(dsn, http):
    task_id = (
        await http.post("/api/tasks", json={"task_type": "web_steps", "params": {"steps": 3}})
    ).json()["id"]
    worker = Worker(dsn, concurrency=2, poll_interval=0.2)
    run = asyncio.create_task(worker.run())
    try:
        r = await http.get(f"/api/tasks/{task_id}/events")
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse(r.text)
        workers = (await http.get("/api/workers")).json()
        assert [w["worker_id"] for w in workers] == [worker.worker_id]
        assert workers[0]["alive"] and workers[0]["concurrency"] == 2
    finally:
        worker.stop()
        await run
    kinds = [k for k, _ in events]
    assert kinds[0] == "status" and kinds[-2:] == ["status", "end"]
    assert events[-1][1]["status"] == "DONE" and events[-1][1]["result"] == {"steps": 3}
    assert isinstance(events[-1][1]["elapsed"], float)  # seconds, as in the JSON answers
    progress = [d["progress_current"] for k, d in events if k in ("status", "progress")]
    progress = [p for p in progress if p is not None]
    assert progress == sorted(progress) and progress[-1] == 3
    assert [d["message"] for k, d in events if k == "log"] == ["step 1", "step 2", "step 3"]
    logs = (await http.get(f"/api/tasks/{task_id}/logs", params={"limit": 2})).json()
    assert [line["message"] for line in logs] == ["step 1", "step 2"]
    rest = await http.get(f"/api/tasks/{task_id}/logs", params={"after_id": logs[-1]["id"]})
    assert [line["message"] for line in rest.json()] == ["step 3"]
    assert (await http.get("/api/workers", params={"include_dead": False})).json() == []


async def test_metrics_parse_and_match_the_database(dsn, http):
    async with Client(dsn) as c:
        ids = await c.submit_many("noop", [{}, {}, {}], queue="m1")
        # WAITING on an unfinished parent: counted too (sql/0016).
        await c.submit("noop", {}, queue="m1", depends_on=[ids[0]])
        done = await c.submit("web_steps", {"steps": 1, "pause": 0}, queue="m2")
        worker = Worker(dsn, queues=["m2"], poll_interval=0.2)
        run = asyncio.create_task(worker.run())
        try:
            await c.wait(done, timeout=60)
        finally:
            worker.stop()
            await run
        # Schedules made after the worker stopped, so nothing fires them: one overdue by
        # 90 s, one paused (no series), one not yet due (lag 0). They add no tasks.
        for name in ("lagging", "paused", "later"):
            await c.create_schedule(name, "noop", every=3600)
        await c.pause_schedule("paused")
        await c.pool.execute(
            "UPDATE pgtasks.schedule_defs SET next_run_at = now()"
            " + CASE name WHEN 'later' THEN interval '1 hour' ELSE interval '-90 seconds' END"
        )
        counts = {
            (r["queue"], r["status"]): r["n"]
            for r in await c.pool.fetch(
                "SELECT queue, status::text, count(*) AS n FROM pgtasks.tasks GROUP BY 1, 2"
            )
        }
    r = await http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    fams = {f.name: f for f in text_string_to_metric_families(r.text)}
    seen = {
        (s.labels["queue"], s.labels["status"]): s.value
        for s in fams["pgtasks_tasks"].samples
        if s.value
    }
    assert seen == counts == {("m1", "PENDING"): 3, ("m1", "WAITING"): 1, ("m2", "DONE"): 1}
    ready = {s.labels["queue"]: s.value for s in fams["pgtasks_queue_ready"].samples}
    assert ready == {"m1": 3, "m2": 0}
    queues = {q["queue"]: q for q in (await http.get("/api/queues")).json()}
    assert queues["m1"]["waiting_on_parents"] == 1 and queues["m1"]["pending"] == 3
    # A gauge histogram (a window, not a counter): the text format gives _gcount its own family.
    count = fams["pgtasks_task_runtime_seconds_gcount"].samples
    assert [(s.labels["task_type"], s.value) for s in count] == [("web_steps", 1)]
    inf = [s for s in fams["pgtasks_task_runtime_seconds"].samples if s.labels["le"] == "+Inf"]
    assert [s.value for s in inf] == [1]
    finished = {
        (s.labels["task_type"], s.labels["status"]): s.value
        for s in fams["pgtasks_tasks_finished_recent"].samples
    }
    assert finished == {("web_steps", "DONE"): 1, ("web_steps", "FAILED"): 0}
    assert "pgtasks_queue_oldest_ready_seconds" in fams and "pgtasks_workers" in fams
    lag = {s.labels["schedule"]: s.value for s in fams["pgtasks_schedule_lag_seconds"].samples}
    assert set(lag) == {"lagging", "later"}
    assert lag["lagging"] >= 90 and lag["later"] == 0


def as_role(dsn: str, role: str) -> str:
    """The same database URL, logged in as `role` (the embedded server trusts local logins)."""
    rest = dsn.removeprefix("postgresql://").split("@", 1)[1]
    return f"postgresql://{role}@{rest}"


async def test_a_reader_role_reads_the_detail_with_steps(dsn, conn):
    """pgtasks_reader alone (no table grants) gets the detail, steps included."""
    tid = await conn.fetchval("SELECT pgtasks.submit_task('t', '{\"x\": 1}')")
    (claim,) = await conn.fetch("SELECT * FROM pgtasks.claim_tasks('w', max_tasks => 1)")
    held = claim["lease_token"]
    await conn.execute("SELECT pgtasks.checkpoint($1, $2, 'fetch', '{\"n\": 1}')", tid, held)
    await conn.execute("SELECT pgtasks.checkpoint($1, $2, 'parse')", tid, held)
    role = f"reader_{uuid.uuid4().hex[:8]}"
    await conn.execute(f"CREATE ROLE {role} LOGIN; GRANT pgtasks_reader TO {role}")
    try:
        async with Client(as_role(dsn, role)) as reader:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await reader.pool.fetch("SELECT 1 FROM pgtasks.task_steps")
            detail = await reader.detail(tid)
            assert detail.steps == ["fetch", "parse"] and detail.params == {"x": 1}
            app = FastAPI()
            app.include_router(router(reader))
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as h:
                r = await h.get(f"/tasks/{tid}")
            assert r.status_code == 200, r.text
            assert r.json()["steps"] == ["fetch", "parse"]
            assert r.json()["status"] == "RUNNING"
    finally:
        await conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


async def test_the_detail_names_the_schedule_that_made_the_task(dsn, http):
    async with Client(dsn) as c:
        await c.create_schedule("nightly", "noop", every=3600)
        scheduled = await c.trigger_schedule("nightly")
        plain = await c.submit("noop")
    detail = (await http.get(f"/api/tasks/{scheduled}")).json()
    assert detail["schedule"] == "nightly" and detail["schedule_tick"] is not None
    assert detail["workflow_id"] is None
    other = (await http.get(f"/api/tasks/{plain}")).json()
    assert other["schedule"] is None and other["schedule_tick"] is None


async def test_router_mounts_under_any_prefix_with_its_own_client(dsn):
    async with Client(dsn) as client:
        app = FastAPI()
        app.include_router(router(client), prefix="/api/admin")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as h:
            r = await h.post("/api/admin/tasks", json={"task_type": "noop"})
            assert r.status_code == 201
            assert (await h.get("/api/admin/tasks")).json()["total"] == 1
            r = await h.get("/api/admin/tasks/424242")
            assert r.status_code == 404 and r.json()["error"]["code"] == "PT003"
    bare = FastAPI()
    bare.include_router(router(), prefix="/x")  # no client and no lifespan: says so
    transport = httpx.ASGITransport(app=bare)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as h:
        r = await h.get("/x/tasks")
        assert r.status_code == 503 and "lifespan" in r.json()["error"]["message"]


async def test_openapi_docs_and_index(http: httpx.AsyncClient):
    spec = (await http.get("/openapi.json")).json()
    for path in ("/api/tasks", "/api/tasks/{task_id}", "/api/tasks/{task_id}/events",
                 "/api/queues", "/api/workers", "/api/schedules"):  # fmt: skip
        assert path in spec["paths"], path
    assert (await http.get("/docs")).status_code == 200
    r = await http.get("/", follow_redirects=False)  # the dashboard
    assert r.status_code == 200 and "<h1>Overview</h1>" in r.text
    assert "/" not in {p for p in spec["paths"] if not p.startswith("/api")}


async def test_the_stream_reports_every_transition_however_brief(dsn, conn, http):
    """RUNNING, a retry's COMMIT and RUNNING again, all within one poll of the stream: each
    is a `status` event, in order, with its transition. Compared between two reads of the
    task, they were lost: the stream went from PENDING to DONE."""
    tid = await conn.fetchval("SELECT pgtasks.submit_task('brief', '{}', max_retries => 3)")
    stream = asyncio.create_task(http.get(f"/api/tasks/{tid}/events"))
    # The stream watches the task (watch_task), then reads its first state in a transaction
    # of its own: it has read it once its backend, a watcher of the task, committed since.
    # Claiming before that read would make RUNNING the first state, not a change.
    while not await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM pgtasks.task_waiters w
                            JOIN pg_stat_activity a ON a.pid = w.pid
                           WHERE w.task_id = $1 AND a.state = 'idle'
                             AND a.query ILIKE 'COMMIT%')""",
        tid,
    ):
        assert not stream.done(), stream.result().text
        await asyncio.sleep(0.01)
    claim = "SELECT id, lease_token FROM pgtasks.claim_tasks('w', max_tasks => 1)"
    (first,) = await conn.fetch(claim)
    await conn.execute(
        "SELECT pgtasks.fail_task($1, $2, 'flaky', retry_delay => '0')", tid, first["lease_token"]
    )
    (second,) = await conn.fetch(claim)
    await conn.execute("SELECT pgtasks.finish_task($1, $2, '7')", tid, second["lease_token"])
    r = await stream
    events = sse(r.text)
    statuses = [(d["status"], d["attempt"]) for k, d in events if k == "status"]
    assert statuses == [("PENDING", 0), ("RUNNING", 1), ("COMMIT", 1), ("RUNNING", 2), ("DONE", 2)]
    moves = [
        (d["transition"]["from_status"], d["transition"]["to_status"])
        for k, d in events[1:]
        if k == "status"
    ]
    assert moves == [
        ("PENDING", "RUNNING"),
        ("RUNNING", "COMMIT"),
        ("COMMIT", "RUNNING"),
        ("RUNNING", "DONE"),
    ]
    assert events[-1][0] == "end" and events[-1][1]["result"] == 7


async def test_charts_come_from_the_roll_up(http: httpx.AsyncClient, conn: asyncpg.Connection):
    await conn.fetchval("SELECT pgtasks.roll_up()")
    tid = await conn.fetchval("SELECT pgtasks.submit_task('noop', queue => 'charted')")
    await conn.execute("SELECT pgtasks.advance_clock(interval '2 seconds')")
    await conn.fetch("SELECT * FROM pgtasks.claim_tasks('w', max_tasks => 1)")
    await conn.execute("SELECT pgtasks.advance_clock(interval '3 seconds')")
    await conn.execute(
        "SELECT pgtasks.finish_task($1, (SELECT lease_token FROM pgtasks.tasks WHERE id = $1))",
        tid,
    )
    await conn.execute("SELECT pgtasks.advance_clock(interval '20 seconds')")
    await conn.fetch("SELECT * FROM pgtasks.maintain()")
    for span, points, width in (("5m", 30, 10), ("1h", 360, 10), ("24h", 288, 300)):
        r = await http.get("/api/charts", params={"span": span})
        assert r.status_code == 200, r.text
        chart = r.json()
        assert chart["span"] == span and len(chart["buckets"]) == points
        assert {b["width_s"] for b in chart["buckets"]} == {width}
        ended = [b for b in chart["buckets"] if b["done"]]
        assert len(ended) == 1 and ended[0]["done"] == 1
        assert ended[0]["run_max"] == pytest.approx(3, abs=0.5)
        assert ended[0]["wait_max"] == pytest.approx(2, abs=0.5)
    r = await http.get("/api/charts", params={"span": "5m", "queue": "other"})
    assert not [b for b in r.json()["buckets"] if b["done"]]
    r = await http.get("/api/charts", params={"span": "2h"})
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("query.span")
