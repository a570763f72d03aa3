"""What `pgtasks serve`'s app refuses, and how: values past their types, bodies that are not
JSON as JSON has it, requests from another site or for another host, bodies too large or too
slow, and auth before any of the body is read. Against the real app (and its real Guard)
and a real database; the socket-level limits are in test_server_limits.py."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
from fastapi import FastAPI

from pgtasks import Client
from pgtasks.web import WebSettings, create_app
from pgtasks.web.api import INT32, INT64
from pgtasks.web.session import Sessions
from tests.web.test_api import TOKEN, api
from tests.web.test_dashboard_pages import FORM, fail_some

BIG = INT64 + 1
BEARER = {"Authorization": f"Bearer {TOKEN}"}


async def total(http: httpx.AsyncClient) -> int:
    return (await http.get("/api/tasks", headers=BEARER)).json()["total"]


# -- the contract ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("GET", f"/api/tasks/1/logs?after_id={BIG}", None, "query.after_id"),
        ("GET", f"/api/tasks/1/events?after_id={BIG}", None, "query.after_id"),
        ("GET", f"/api/tasks/{BIG}", None, "path.task_id"),
        ("GET", f"/api/workflows/{BIG}", None, "path.workflow_id"),
        ("POST", f"/api/workflows/{BIG}/cancel", None, "path.workflow_id"),
        ("POST", "/api/tasks", {"task_type": "t", "depends_on": [BIG]}, "body.depends_on.0"),
        ("POST", "/api/tasks/cancel", {"ids": [BIG]}, "body.ids.0"),
        ("POST", "/api/tasks/retry", {"ids": [0]}, "body.ids.0"),
        ("POST", "/api/tasks", {"task_type": "t", "max_retries": INT32 + 1}, "body.max_retries"),
        ("POST", "/api/tasks", {"task_type": "t", "priority": -(2**31) - 1}, "body.priority"),
        ("PUT", "/api/queues/q/settings", {"max_running": INT32 + 1}, "body.max_running"),
        ("PUT", "/api/queues/q/settings", {"rate_limit": INT32 + 1}, "body.rate_limit"),
        ("PUT", "/api/queues/q/settings", {"rate_period_s": 1e-7}, "body.rate_period_s"),
        ("POST", "/api/tasks", {"task_type": "t", "timeout_s": 1e300}, "body.timeout_s"),
        ("POST", "/api/tasks", {"task_type": "t", "delay_s": 1e300}, "body.delay_s"),
        ("POST", "/api/tasks", {"task_type": "t\x00"}, "body.task_type"),
        ("POST", "/api/tasks", {"task_type": "t", "unique_key": "k\x00"}, "body.unique_key"),
        ("GET", "/api/tasks?queue=a%00b", None, "query.queue"),
        ("POST", "/api/queues/a%00b/pause", None, "path.queue"),
        ("POST", "/api/schedules/a%00b/trigger", None, "path.name"),
        # JSON types as they are: no true for 1, no "5" for 5, no 0 for 1970.
        ("POST", "/api/tasks", {"task_type": "t", "max_retries": True}, "body.max_retries"),
        ("POST", "/api/tasks", {"task_type": "t", "priority": "5"}, "body.priority"),
        ("POST", "/api/tasks", {"task_type": "t", "run_at": 0}, "body.run_at"),
        ("POST", "/api/tasks", {"task_type": "t", "run_at": "2030-01-01T00:00:00"}, "body.run_at"),
        # Rules between fields (unique_key with depends_on is the client's InvalidArgument,
        # PT100: tests/web/test_api.py).
        ("POST", "/api/tasks/cancel", {"filter": {"queue": None}}, "body.filter"),
        ("POST", "/api/tasks/cancel", {"filter": {"error": "boom"}}, "body.filter.error"),
        ("POST", "/api/tasks/retry", {}, "body"),
    ],
)
async def test_values_past_their_types_are_422_naming_the_field(dsn, method, path, body, field):
    async with api(dsn) as http:
        r = await http.request(method, path, json=body)
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "invalid_request" and error["message"].startswith(field), error
        assert await total(http) == 0


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"task_type": "t", "params": {"x": NaN}}', "NaN is not a JSON number"),
        (b'{"task_type": "t", "params": {"x": Infinity}}', "Infinity is not a JSON number"),
        (b'{"task_type": "t", "params": {"x": [-Infinity]}}', "-Infinity is not"),
        (b'{"task_type": "t", "params": {"x": 1e999}}', "too large for a double"),
        (b'{"task_type": "t", "params": {"\\ud800": 1}}', "lone UTF-16 surrogate"),
        (b'{"task_type": "t\\udfff"}', "lone UTF-16 surrogate"),
        (b'{"task_type": "\xff"}', "not UTF-8"),
        (b'{"task_type": "t", "params": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}", "deep"),
        (b'{"task_type": ', "Expecting value"),
    ],
)
async def test_bodies_that_are_not_json_are_422_saying_why(dsn, body, why):
    async with api(dsn) as http:
        r = await http.post(
            "/api/tasks", content=body, headers={"content-type": "application/json"}
        )
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "invalid_request" and error["message"].startswith("body:")
        assert why in error["message"], error
        assert await total(http) == 0


async def test_the_database_refuses_a_nul_inside_params_with_its_code(dsn):
    """The schema cannot forbid NUL everywhere inside params; jsonb refuses it (class 22)."""
    async with api(dsn) as http:
        r = await http.post("/api/tasks", json={"task_type": "t", "params": {"x": "a\x00b"}})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"].startswith("22"), r.text
        assert await total(http) == 0


@pytest.mark.parametrize("verb", ["pause", "resume", "trigger"])
async def test_a_missing_schedule_is_404(dsn, verb):
    async with api(dsn) as http:
        r = await http.post(f"/api/schedules/nope/{verb}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "PT407", r.text


async def test_routing_errors_have_the_one_shape_and_the_whole_allow(dsn):
    async with api(dsn) as http:
        r = await http.get("/api/nothing-here")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        for method, path, allow in [
            ("PUT", "/api/tasks", "GET, POST"),
            ("OPTIONS", "/api/tasks/cancel", "POST"),
            ("DELETE", "/api/queues/q/pause", "POST"),
            ("GET", "/api/queues/q/settings", "PUT"),
        ]:
            r = await http.request(method, path)
            assert r.status_code == 405, (method, path, r.text)
            assert r.headers["allow"] == allow, (method, path)
            assert r.json()["error"]["code"] == "method_not_allowed"


async def test_durations_are_seconds_as_documented(dsn):
    await fail_some(dsn, 1)
    async with api(dsn) as http:
        item = (await http.get("/api/tasks")).json()["items"][0]
        detail = (await http.get(f"/api/tasks/{item['id']}")).json()
        spec = (await http.get("/openapi.json")).json()
    assert isinstance(item["elapsed"], float) and isinstance(detail["elapsed"], float)
    schemas = spec["components"]["schemas"]
    for name in ("Task", "TaskFull"):
        assert schemas[name]["properties"]["elapsed"]["anyOf"][0] == {"type": "number"}


async def test_the_openapi_bounds_are_exact_and_bearer_is_declared(dsn):
    async with api(dsn) as http:
        open_spec = (await http.get("/openapi.json")).json()
    async with api(dsn, api_token=TOKEN, api_open_reads=True) as http:
        spec = (await http.get("/openapi.json")).json()
    ids = spec["components"]["schemas"]["CancelRequest"]["properties"]["ids"]["anyOf"][0]
    assert ids["items"]["maximum"] == INT64 and isinstance(ids["items"]["maximum"], int)
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "PGTASKS_API_TOKEN",
    }  # fmt: skip
    post = spec["paths"]["/api/tasks"]["post"]
    assert post["security"] == [{"bearer": []}] and "401" in post["responses"]
    get = spec["paths"]["/api/tasks"]["get"]  # reads are open here
    assert "security" not in get and "401" not in get["responses"]
    assert "securitySchemes" not in open_spec.get("components", {})


# -- auth comes first ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running(dsn: str, **settings: Any) -> AsyncIterator[FastAPI]:
    app = create_app(WebSettings(database_url=dsn, **settings))
    async with app.router.lifespan_context(app):
        yield app


async def asgi(
    app: FastAPI,
    method: str,
    path: str,
    headers: dict[str, str],
    chunks: list[bytes],
    *,
    complete: bool = True,
) -> tuple[int, dict[str, str], bytes, int]:
    """One request straight through the ASGI app: `chunks` is the body as it arrives, and
    with `complete=False` the rest never does. Returns status, headers, body and how many
    times the app asked for the body."""
    asked = 0
    pending = list(chunks)

    async def receive() -> dict[str, Any]:
        nonlocal asked
        asked += 1
        if not pending:
            await asyncio.Event().wait()  # the rest never comes
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending) or not complete}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    raw = [(k.lower().encode(), v.encode()) for k, v in ({"host": "localhost"} | headers).items()]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000),
        "headers": raw,
        "state": {},
    }  # fmt: skip
    await asyncio.wait_for(app(scope, receive, send), 60)  # bounds a hang, not speed
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    got = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], got, body, asked


async def test_auth_is_checked_before_a_byte_of_the_body_is_read(dsn):
    async with running(dsn, api_token=TOKEN) as app:
        # A body that never arrives: answered 401 all the same, and never asked for.
        headers = {"content-type": "application/json", "content-length": "50"}
        status, headers, body, asked = await asgi(
            app, "POST", "/api/tasks", headers, [], complete=False
        )
        assert (status, asked) == (401, 0), body
        assert headers["www-authenticate"] == "Bearer" and b'"unauthorized"' in body
        # An invalid body without the token is a 401, not a validation error.
        status, _, _, _ = await asgi(app, "POST", "/api/tasks", {}, [b'{"bogus": 1}'])
        assert status == 401


async def test_a_large_body_is_refused_before_it_is_read(dsn):
    async with running(dsn) as app:
        headers = {"content-type": "application/json", "content-length": str(83_000_000)}
        status, got, body, asked = await asgi(
            app, "POST", "/api/tasks", headers, [], complete=False
        )
        assert (status, asked) == (413, 0), body
        assert b'"too_large"' in body and got["connection"] == "close"


async def test_a_body_without_length_is_counted_as_it_arrives(dsn):
    async with running(dsn, api_token=TOKEN, api_max_body_bytes=4096) as app:
        chunks = [b'{"task_type": "t", "params": {"x": "' + b"a" * 1000] * 20
        headers = {**BEARER, "content-type": "application/json"}
        status, got, body, asked = await asgi(app, "POST", "/api/tasks", headers, chunks)
        assert status == 413, body
        assert asked == 4  # 4 chunks of 1036 bytes pass 4096: no more is read
        assert got["connection"] == "close"


async def test_a_body_too_slow_is_408(dsn):
    async with running(dsn, api_body_timeout=0.2) as app:
        headers = {"content-type": "application/json", "content-length": "100"}
        status, got, body, _ = await asgi(
            app, "POST", "/api/tasks", headers, [b'{"task'], complete=False
        )
        assert status == 408 and b'"request_timeout"' in body, body
        assert got["connection"] == "close"


@pytest.mark.parametrize(
    "header",
    [
        (b"authorization", "Bearer s3crét".encode()),
        (b"authorization", "Bearer ﬀ".encode()),
        (b"cookie", "pgtasks_dashboard=é.é.é".encode()),
    ],
)
async def test_non_ascii_credentials_are_refused_not_a_crash(dsn, header):
    async with api(dsn, api_token=TOKEN) as http:
        for path, want in [("/api/tasks", 401), ("/openapi.json", 401), ("/tasks", 303)]:
            r = await http.get(path, headers=[header])
            assert r.status_code == want, (path, r.text)


# -- Host and Origin ------------------------------------------------------------------------


async def test_with_no_token_only_allowed_hosts_are_answered(dsn):
    async with api(dsn) as http:
        for host in ("localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000"):
            assert (await http.get("/api/tasks", headers={"Host": host})).status_code == 200
        # DNS rebinding: the attacker's name, now pointing at 127.0.0.1.
        r = await http.get("/api/tasks", headers={"Host": "rebind.attacker.example:8000"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "host_not_allowed"
        assert "PGTASKS_ALLOWED_HOSTS" in r.json()["error"]["hint"]
        assert (await http.get("/", headers={"Host": "rebind.attacker.example"})).status_code == 400
    async with api(dsn, allowed_hosts="tasks.example.com, other.example") as http:
        r = await http.get("/api/tasks", headers={"Host": "tasks.example.com"})
        assert r.status_code == 200
        assert (await http.get("/api/tasks", headers={"Host": "localhost"})).status_code == 400
    async with api(dsn, host="10.1.2.3") as http:  # the bind address is allowed by default
        assert (await http.get("/api/tasks", headers={"Host": "10.1.2.3:8000"})).status_code == 200
    async with api(dsn, allowed_hosts="*") as http:
        assert (await http.get("/api/tasks", headers={"Host": "any.example"})).status_code == 200
    async with api(dsn, api_token=TOKEN) as http:  # the token guards; hosts only if named
        r = await http.get("/api/tasks", headers={"Host": "any.example", **BEARER})
        assert r.status_code == 200


async def test_writes_from_another_origin_are_refused(dsn):
    async with api(dsn, allowed_origins="https://proxy.example") as http, Client(dsn) as c:
        refused: list[dict[str, str]] = [
            {"Origin": "http://evil.example"},
            {"Origin": "http://localhost:3000"},  # another app on this machine
            {"Origin": "null"},
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site"},
        ]
        for headers in refused:
            r = await http.post("/api/queues/q/pause", headers=headers)
            assert r.status_code == 403, headers
            assert r.json()["error"]["code"] == "cross_origin"
            r = await http.post("/login", content="token=x", headers={**FORM, **headers})
            assert r.status_code == 403
        assert [q for q in await c.queues() if q["queue"] == "q" and q["paused"]] == []
        allowed: list[dict[str, str]] = [
            {"Origin": "http://localhost"},  # the page's own origin
            {"Origin": "https://proxy.example"},
            {"Sec-Fetch-Site": "same-origin"},
            {},  # curl, httpx: no browser, no forgery
        ]
        for headers in allowed:
            assert (await http.post("/api/queues/q/pause", headers=headers)).status_code == 200
        # Reads from anywhere are answered: the browser keeps the answer from the page.
        r = await http.get("/api/tasks", headers={"Origin": "http://evil.example"})
        assert r.status_code == 200


# -- names in URLs ----------------------------------------------------------------------------


async def test_a_queue_named_like_a_path_stays_in_its_own_route(dsn):
    name = "a/../../schedules/x"
    async with Client(dsn) as c:
        await c.create_schedule("x", "noop", every=3600)
        await c.submit("noop", {}, queue=name)
    async with api(dsn) as http:
        page = (await http.get("/queues")).text
        urls = [u for u in page.split('data-url="')[1:] if u.startswith("/api/queues/a")]
        pause = next(u.split('"')[0] for u in urls if "/pause" in u.split('"')[0])
        assert pause == "/api/queues/a%2F..%2F..%2Fschedules%2Fx/pause"
        # The browser resolves the URL against the page: nothing to resolve in it.
        target = urljoin("http://localhost/queues", pause)
        r = await http.post(target)
        assert r.json() == {"queue": name, "paused": True}, r.text
    async with Client(dsn) as c:
        schedules = {s["name"]: s for s in await c.schedules()}
        assert schedules["x"]["paused"] is False
        assert {q["queue"]: q["paused"] for q in await c.queues()}[name] is True


# -- sessions and the docs ----------------------------------------------------------------------


def test_sessions_are_signed_expire_and_end_at_logout():
    now = [1_000_000.0]
    s = Sessions(TOKEN, secret=b"k" * 32, ttl=60, clock=lambda: now[0])
    cookie = s.issue()
    assert s.valid(cookie) and TOKEN not in cookie
    assert hashlib.sha256(f"pgtasks-dashboard:{TOKEN}".encode()).hexdigest() not in cookie
    assert s.issue() != cookie  # a nonce each: no value is fixed by the token
    expires, nonce, mac = cookie.split(".")
    assert not s.valid(f"{int(expires) + 3600}.{nonce}.{mac}")  # a later expiry: forged
    assert not s.valid(f"{expires}.{nonce}.{'0' * len(mac)}")
    assert not s.valid("") and not s.valid("a.b") and not s.valid("é.é.é")
    # The same secret and token elsewhere (another process): the same answer.
    assert Sessions(TOKEN, secret=b"k" * 32, ttl=60, clock=lambda: now[0]).valid(cookie)
    assert not Sessions("another token", secret=b"k" * 32, clock=lambda: now[0]).valid(cookie)
    assert not Sessions(TOKEN, clock=lambda: now[0]).valid(cookie)  # a random secret
    now[0] += 61
    assert not s.valid(cookie)  # expired
    now[0] -= 61
    s.revoke(cookie)
    assert not s.valid(cookie)  # logged out, for every copy of the cookie
    assert s.valid(s.issue())


async def test_logout_ends_the_session_for_every_copy_of_the_cookie(dsn):
    async with api(dsn, api_token=TOKEN) as http:
        r = await http.post("/login", content=f"token={TOKEN}&next=/tasks", headers=FORM)
        cookie = r.cookies["pgtasks_dashboard"]
        assert "max-age=43200" in r.headers["set-cookie"].lower()
        stolen = {"Cookie": f"pgtasks_dashboard={cookie}"}
        assert (await http.get("/tasks", headers=stolen)).status_code == 200
        assert (await http.post("/logout")).status_code == 303
        r = await http.get("/tasks", headers=stolen)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")


async def test_the_docs_need_the_token_and_load_nothing_from_elsewhere(dsn):
    async with api(dsn, api_token=TOKEN) as http:
        assert (await http.get("/openapi.json")).status_code == 401
        for page in ("/docs", "/redoc"):
            r = await http.get(page)
            assert r.status_code == 303 and r.headers["location"] == f"/login?next={page}"
        assert (await http.get("/openapi.json", headers=BEARER)).status_code == 200
        await http.post("/login", content=f"token={TOKEN}&next=/docs", headers=FORM)
        swagger = await http.get("/docs")  # the session cookie, as a browser sends it
        redoc = await http.get("/redoc")
        assert (await http.get("/openapi.json")).status_code == 200
    assert swagger.status_code == 200 and redoc.status_code == 200
    for page in (swagger.text, redoc.text):
        assert "http" not in page  # no absolute URL: every asset is this server's
    assert "/docs/static/swagger-ui-bundle.js" in swagger.text
    assert "/docs/static/redoc.standalone.js" in redoc.text
    async with api(dsn, api_token=TOKEN, api_open_reads=True) as http:
        assert (await http.get("/openapi.json")).status_code == 200
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
            r = await http.get(f"/docs/static/{asset}")
            assert r.status_code == 200 and len(r.content) > 100_000, asset
        assert (await http.get("/docs/static/README.md")).status_code == 404
