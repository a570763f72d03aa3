"""Schedules over the HTTP API, as `pgtasks schedules` has them: create, replace, pause,
resume, delete, through pgtasks.create_schedule and its siblings against a real database."""

from __future__ import annotations

import re

import httpx

from pgtasks import Client
from tests.web.test_api import TOKEN, api


async def names(http: httpx.AsyncClient) -> dict[str, dict]:
    return {s["name"]: s for s in (await http.get("/api/schedules")).json()}


async def test_create_replace_pause_resume_and_delete(dsn):
    async with api(dsn) as http:
        r = await http.post(
            "/api/schedules",
            json={"name": "nightly", "task_type": "noop", "every_s": 3600, "params": {"x": 1}},
        )
        assert r.status_code == 201, r.text
        assert r.headers["location"] == "schedules/nightly"
        row = r.json()
        assert row["name"] == "nightly" and row["every"] == 3600 and row["params"] == {"x": 1}
        assert row["cron"] is None and row["paused"] is False and row["origin"] == "sql"

        r = await http.put(
            "/api/schedules/nightly",
            json={"task_type": "noop", "cron": "0 6 * * *", "timezone": "Europe/Berlin",
                  "overlap": "skip", "catch_up_s": 600, "misfire_grace_s": 300},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        row = (await names(http))["nightly"]
        assert row["cron"] == "0 6 * * *" and row["every"] is None
        assert row["timezone"] == "Europe/Berlin" and row["overlap"] == "skip"
        assert row["catch_up"] == 600 and row["misfire_grace"] == 300 and row["params"] == {}

        assert (await http.post("/api/schedules/nightly/pause")).json()["paused"] is True
        assert (await names(http))["nightly"]["paused"] is True
        # Replacing the definition leaves pausing as it is.
        r = await http.put("/api/schedules/nightly", json={"task_type": "noop", "every_s": 60})
        assert r.json()["paused"] is True and r.json()["every"] == 60
        assert (await http.post("/api/schedules/nightly/resume")).json()["paused"] is False
        assert (await names(http))["nightly"]["paused"] is False

        r = await http.delete("/api/schedules/nightly")
        assert r.status_code == 204 and r.content == b""
        assert "nightly" not in await names(http)
        r = await http.delete("/api/schedules/nightly")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "PT407" and r.json()["error"]["hint"]


async def test_the_database_refuses_a_bad_definition_with_its_code_and_hint(dsn):
    async with api(dsn) as http:
        assert (
            await http.put("/api/schedules/s", json={"task_type": "noop", "every_s": 60})
        ).status_code == 200
        for body, code in [
            ({"task_type": "noop", "cron": "61 * * * *"}, "PT401"),
            ({"task_type": "noop", "cron": "0 6 * * *", "timezone": "Mars/Olympus"}, "PT402"),
            ({"task_type": "noop", "every_s": 0.5}, "PT403"),  # under schedule_min_every
            ({"task_type": "noop"}, "PT404"),  # neither cron nor every
            ({"task_type": "noop", "every_s": 60, "misfire_grace_s": 1}, "PT410"),
        ]:
            r = await http.put("/api/schedules/s", json=body)
            assert r.status_code == 422, (body, r.text)
            err = r.json()["error"]
            assert err["code"] == code and err["hint"], (body, err)
        # Nothing was written by the refusals.
        assert (await names(http))["s"]["every"] == 60
        # What the HTTP layer bounds is refused before SQL, naming the field.
        r = await http.put("/api/schedules/s", json={"task_type": "noop", "every_s": 60,
                                                     "overlap": "sometimes"})  # fmt: skip
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
        assert r.json()["error"]["message"].startswith("body.overlap")


async def test_a_name_with_a_slash_is_one_schedule(dsn):
    async with api(dsn) as http:
        r = await http.put("/api/schedules/a%2Fb%2Fpause", json={"task_type": "noop",
                                                                 "every_s": 60})  # fmt: skip
        assert r.status_code == 200 and r.json()["name"] == "a/b/pause"
        r = await http.post("/api/schedules", json={"name": "x/y", "task_type": "noop",
                                                    "every_s": 60})  # fmt: skip
        assert r.headers["location"] == "schedules/x%2Fy"
        assert (await http.delete("/api/schedules/a%2Fb%2Fpause")).status_code == 204
        assert set(await names(http)) == {"x/y"}


async def test_writes_need_the_token_and_the_same_origin(dsn):
    body = {"task_type": "noop", "every_s": 60}
    async with api(dsn, api_token=TOKEN) as http, Client(dsn) as c:
        await c.create_schedule("kept", "noop", every=60)
        assert (await http.put("/api/schedules/new", json=body)).status_code == 401
        assert (await http.post("/api/schedules", json={"name": "new", **body})).status_code == 401
        assert (await http.delete("/api/schedules/kept")).status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        r = await http.delete(
            "/api/schedules/kept", headers={**auth, "Origin": "http://evil.example"}
        )
        assert r.status_code == 403, r.text
        assert [s["name"] for s in await c.schedules()] == ["kept"]
        assert (await http.delete("/api/schedules/kept", headers=auth)).status_code == 204
        assert await c.schedules() == []


async def test_a_method_the_action_route_does_not_take_is_405_not_a_schedule(dsn):
    async with api(dsn) as http:
        body = {"task_type": "noop", "every_s": 60}
        for method in ("PUT", "DELETE"):
            r = await http.request(method, "/api/schedules/x/pause", json=body)
            assert r.status_code == 405, (method, r.text)
            assert r.headers["allow"] == "POST"
        assert await names(http) == {}
        # The same name sent as one segment is the schedule's.
        r = await http.put("/api/schedules/x%2Fpause", json=body)
        assert r.status_code == 200 and r.json()["name"] == "x/pause"
        # A literal "/" is no part of a name, in any route.
        r = await http.post("/api/schedules/x/pause/pause")
        assert r.status_code == 404, r.text
        assert (await http.post("/api/schedules/x%2Fpause/pause")).json()["paused"] is True


async def test_the_schedules_page_deletes_through_the_route(dsn):
    async with Client(dsn) as c:
        await c.create_schedule("a/b", "noop", every=3600)
    async with api(dsn) as http:
        page = (await http.get("/schedules")).text
        button = re.search(r'<button[^>]*data-method="DELETE"[^>]*>Delete</button>', page)
        assert button, page
        url = re.search(r'data-url="([^"]+)"', button.group(0)).group(1)
        assert url == "/api/schedules/a%2Fb"
        assert (await http.request("DELETE", url)).status_code == 204
        assert "No schedule" in (await http.get("/schedules")).text
