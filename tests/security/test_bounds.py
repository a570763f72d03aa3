"""Bounds on every role's input, and the powers only pgtasks_admin has.

Each attempt is made logged in as the role that would make it (`login`) and must be refused
with a PT SQLSTATE, writing nothing, or change nothing another role can see:

- JSON every client can decode (params, results, step results, schedule params);
- one row Python cannot decode (planted by the superuser, as a row from before the check
  would be) fails only itself, in every reader and in a worker's claim batch;
- schedules that cannot burst (a floor on `every`, a cap on one firing) or hold the others
  (a bounded due_schedules claim); pruning and task type policies are the admin's, or the
  owning role's; unique keys belong to their task type;
- names of every kind are never blank (Unicode invisible characters included), time
  arguments stay within 100 years, worker ids within 255 bytes, cron expressions fire.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest

import tests.apps.basic  # noqa: F401  (registers noop)
from pgtasks import Client, Undecodable, Worker
from pgtasks.migrations import available, migrate_url
from pgtasks.web import WebSettings, create_app
from tests.conftest import ROOT
from tests.security.conftest import wait_until


def nested(levels: int) -> str:
    """An object whose innermost value is `levels` levels below the top."""
    return '{"a": ' + "[" * (levels - 1) + "1" + "]" * (levels - 1) + "}"


def number(digits: int) -> str:
    return '{"n": 1' + "0" * (digits - 1) + "}"


# Refused: one level too deep, a number of 4,001 digits (1e4000); accepted: the limits.
REFUSED = {"deep": nested(101), "huge": number(4001), "negative": '{"n": [-1' + "0" * 4000 + "]}"}
ACCEPTED = {"deep": nested(100), "huge": number(4000)}
# What Python's json cannot decode at all (RecursionError, int's 4,300-digit limit), as a
# row written before the check, or by hand, could hold.
PLANTED_DEEP = '{"a": ' + "[" * 2000 + "]" * 2000 + "}"
PLANTED_HUGE = '{"n": ' + "9" * 5000 + "}"

# Names that render as nothing: direction marks, Braille blank, Hangul filler, variation
# selector, tag characters, soft hyphen, isolates, interlinear annotation.
INVISIBLE = ["\u200e\u200f", "\u2800", "\u3164", "\ufe0f", "\U000e0041\U000e007f", "\u00ad",
             "\u2066\u2069", "\ufff9"]  # fmt: skip


async def refused(conn: asyncpg.Connection, sqlstate: str, sql: str, *args: Any) -> str:
    """Run `sql`, expect `sqlstate` with a HINT; returns the message."""
    with pytest.raises(asyncpg.PostgresError) as info:
        await conn.fetch(sql, *args)
    assert info.value.sqlstate == sqlstate, (sql, info.value.sqlstate, str(info.value))
    assert getattr(info.value, "hint", None), (sql, "no HINT")
    return str(info.value)


# Every table an attempt could write, and the schedules held by a due_schedules claim.
TABLES = ("tasks", "task_steps", "task_logs", "schedule_defs", "workflow_runs", "task_types",
          "worker_registry", "unique_windows", "task_events")  # fmt: skip
COUNTS = (
    "SELECT "
    + ", ".join(f"(SELECT count(*) FROM pgtasks.{t})" for t in TABLES)
    + ", (SELECT count(*) FROM pgtasks.schedule_defs WHERE claimed_until IS NOT NULL)"
)
ROLES = ("pgtasks_submitter", "pgtasks_worker", "pgtasks_admin")


async def claimed(su: asyncpg.Connection, n: int = 1, worker: str = "w") -> list[asyncpg.Record]:
    for _ in range(n):
        await su.fetchval("SELECT pgtasks.submit_task('t')")
    return list(await su.fetch("SELECT * FROM pgtasks.claim_tasks($1, max_tasks => $2)", worker, n))


# -- JSON ----------------------------------------------------------------------------------


# Each entry point of a JSON value a client reads back: (role, statement with the value as
# $1); {t} and {a} stand for a running task and its lease token.
JSON_ENTRIES = [
    ("pgtasks_submitter", "SELECT pgtasks.submit_task('t', $1::jsonb)"),
    ("pgtasks_submitter", "SELECT * FROM pgtasks.submit_or_get('t', $1::jsonb, unique_key => 'k')"),
    ("pgtasks_submitter", "SELECT pgtasks.submit_tasks('t', ARRAY['{{}}', $1, '{{}}']::jsonb[])"),
    ("pgtasks_submitter", "SELECT pgtasks.submit_workflow(jsonb_build_object('nodes', "
                          "jsonb_build_array("
                          "jsonb_build_object('name', 'a', 'type', 't', 'params', $1::jsonb))))"),
    ("pgtasks_worker", "SELECT pgtasks.declare_schedule('s', 't', every => '1h', params => $1)"),
    ("pgtasks_admin", "SELECT pgtasks.create_schedule('s', 't', every => '1h', params => $1)"),
    ("pgtasks_worker", "SELECT pgtasks.checkpoint({t}, {a}, 'step', $1::jsonb)"),
    ("pgtasks_worker", "SELECT pgtasks.finish_task({t}, {a}, $1::jsonb)"),
]  # fmt: skip


@pytest.mark.parametrize("kind", sorted(REFUSED))
async def test_json_clients_cannot_decode_is_refused_at_every_entry(login, su, kind):
    conns = {r: await login(r) for r in ROLES}
    (task,) = await claimed(su)
    before = await su.fetchrow(COUNTS)
    for role, sql in JSON_ENTRIES:
        sql = sql.format(t=task["id"], a=f"'{task['lease_token']}'")
        msg = await refused(conns[role], "PT123", sql, REFUSED[kind])
        assert "cannot decode" in msg, msg
    assert await su.fetchrow(COUNTS) == before
    status = "SELECT status::text FROM pgtasks.tasks WHERE id = $1"
    assert await su.fetchval(status, task["id"]) == "RUNNING"
    if kind in ACCEPTED:  # the limits themselves pass
        for role, sql in JSON_ENTRIES:
            sql = sql.format(t=task["id"], a=f"'{task['lease_token']}'")
            await conns[role].execute(sql, ACCEPTED[kind])
        assert await su.fetchval(status, task["id"]) == "DONE"


async def test_a_batch_finish_fails_only_the_result_clients_cannot_decode(login, su):
    wk = await login("pgtasks_worker")
    for sql in ("SELECT * FROM pgtasks.finish_tasks($1, $2, $3::jsonb[])",
                "SELECT * FROM pgtasks.finish_and_claim('w', $1, $2, $3::jsonb[], 1)"):  # fmt: skip
        a, b, c = await claimed(su, 3)
        ids, attempts = (
            [a["id"], b["id"], c["id"]],
            [a["lease_token"], b["lease_token"], c["lease_token"]],
        )
        rows = await wk.fetch(sql, ids, attempts, ['{"ok": 1}', REFUSED["deep"], '{"ok": 3}'])
        assert [r["rejected_task_id"] for r in rows if r["rejected_task_id"]] == [b["id"]], sql
        q = "SELECT id, status::text FROM pgtasks.tasks WHERE id = ANY($1)"
        assert dict(await su.fetch(q, ids)) == {a["id"]: "DONE", b["id"]: "FAILED", c["id"]: "DONE"}
        error = await su.fetchval("SELECT error FROM pgtasks.tasks WHERE id = $1", b["id"])
        assert "cannot decode" in error and "100 levels" in error, error


# -- one undecodable row fails only itself -------------------------------------------------


async def planted(su: asyncpg.Connection) -> dict[str, int]:
    """Three tasks and a schedule; the superuser plants JSON Python cannot decode in one
    task's params, another's result and the schedule's params, past every check."""
    (done,) = await claimed(su)
    await su.execute("SELECT pgtasks.finish_task($1, $2, '{}')", done["id"], done["lease_token"])
    ok = await su.fetchval("SELECT pgtasks.submit_task('t', '{\"x\": 1}')")
    deep = await su.fetchval("SELECT pgtasks.submit_task('t')")
    await su.execute(
        "UPDATE pgtasks.tasks SET params = $2::text::jsonb WHERE id = $1", deep, PLANTED_DEEP
    )
    await su.execute(
        "UPDATE pgtasks.tasks SET result = $2::text::jsonb WHERE id = $1", done["id"], PLANTED_HUGE
    )
    await su.execute("SELECT pgtasks.create_schedule('nightly', 't', cron => '0 3 * * *')")
    await su.execute("SELECT pgtasks.create_schedule('hourly', 't', cron => '0 * * * *')")
    await su.execute(
        "UPDATE pgtasks.schedule_defs SET params = $1::text::jsonb WHERE name = 'nightly'",
        PLANTED_DEEP,
    )
    return {"ok": ok, "deep": deep, "done": done["id"]}


@contextlib.asynccontextmanager
async def api(dsn: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(WebSettings(database_url=dsn))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            yield http


async def test_an_undecodable_row_fails_only_itself_in_the_client_and_the_api(sec_dsn, su):
    ids = await planted(su)
    async with Client(sec_dsn) as client:
        listed = {t.id: t for t in await client.list_tasks()}
        assert set(ids.values()) <= listed.keys()
        assert isinstance(listed[ids["done"]].result, Undecodable)
        assert "cannot decode" in listed[ids["done"]].result
        assert {t.id for t in (await client.page()).items} >= set(ids.values())
        assert {r["id"] for r in await client.browse()} >= set(ids.values())
        assert isinstance((await client.get(ids["done"])).result, Undecodable)
        detail = await client.detail(ids["deep"])
        assert detail.status == "PENDING" and isinstance(detail.params, Undecodable)
        schedules = {s["name"]: s for s in await client.schedules()}
        assert isinstance(schedules["nightly"]["params"], Undecodable)
        assert schedules["hourly"]["params"] == {}
    async with api(sec_dsn) as http:
        r = await http.get("/api/tasks")
        assert r.status_code == 200, r.text
        assert {t["id"] for t in r.json()["items"]} >= set(ids.values())
        r = await http.get(f"/api/tasks/{ids['deep']}")
        assert r.status_code == 200 and "cannot decode" in r.json()["params"]
        r = await http.get(f"/api/tasks/{ids['done']}/events")
        assert r.status_code == 200 and "event: end" in r.text and "cannot decode" in r.text
        r = await http.get("/api/schedules")
        assert r.status_code == 200 and {s["name"] for s in r.json()} == {"nightly", "hourly"}


def cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGTASKS_DATABASE_URL": dsn, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "pgtasks.cli", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


async def test_an_undecodable_row_fails_only_itself_in_the_cli(sec_dsn, su):
    ids = await planted(su)
    ls = await asyncio.to_thread(cli, sec_dsn, "ls")
    assert ls.returncode == 0, ls.stderr
    assert all(str(i) in ls.stdout for i in ids.values())
    for tid in (ids["deep"], ids["done"]):
        status = await asyncio.to_thread(cli, sec_dsn, "status", str(tid))
        assert status.returncode == 0, status.stderr
    assert "cannot decode" in status.stdout  # the result, in its place


async def test_a_claimed_task_whose_params_cannot_be_decoded_fails_alone(sec_dsn, su):
    ids = [await su.fetchval("SELECT pgtasks.submit_task('noop')") for _ in range(3)]
    await su.execute(
        "UPDATE pgtasks.tasks SET params = $2::text::jsonb WHERE id = $1", ids[1], PLANTED_DEEP
    )
    worker = Worker(sec_dsn, concurrency=3, poll_interval=0.1)
    run = asyncio.create_task(worker.run())
    try:

        async def ended() -> bool:
            q = "SELECT bool_and(finished_at IS NOT NULL) FROM pgtasks.tasks WHERE id = ANY($1)"
            return bool(await su.fetchval(q, ids))

        await wait_until(ended)
    finally:
        worker.stop()
        await asyncio.wait_for(run, 30)
    rows = {
        r["id"]: r for r in await su.fetch("SELECT * FROM pgtasks.tasks WHERE id = ANY($1)", ids)
    }
    assert [rows[i]["status"] for i in ids] == ["DONE", "FAILED", "DONE"]
    assert "cannot be decoded" in rows[ids[1]]["error"] and rows[ids[1]]["attempt"] == 1


# -- powers --------------------------------------------------------------------------------


async def test_every_has_a_floor_and_one_firing_a_cap(login, su):
    wk, admin = await login("pgtasks_worker"), await login("pgtasks_admin")
    before = await su.fetchrow(COUNTS)
    for conn, fn in ((wk, "declare_schedule"), (admin, "create_schedule")):
        await refused(conn, "PT403", f"SELECT pgtasks.{fn}('burst', 't', every => '1 millisecond')")
        await refused(
            conn, "PT403", f"SELECT pgtasks.{fn}('burst', 't', every => '999 milliseconds')"
        )
    assert await su.fetchrow(COUNTS) == before
    # The floor is a setting: an admin may lower it.
    await admin.execute("SELECT pgtasks.configure(schedule_min_every => '100 milliseconds')")
    await admin.execute("SELECT pgtasks.create_schedule('fast', 't', every => '100 milliseconds')")
    await admin.execute("SELECT pgtasks.configure(schedule_min_every => '1 second')")
    await admin.execute("SELECT pgtasks.drop_schedule('fast')")

    # A schedule that asks for a day of catch-up, and one stored before the floor (by hand
    # here): after an hour of outage, one firing enqueues at most schedule_max_ticks.
    await wk.execute(
        "SELECT pgtasks.declare_schedule('every-second', 't', every => '1s', catch_up => '1 day')"
    )
    await wk.execute(
        "SELECT pgtasks.declare_schedule('legacy', 't', every => '1 second', catch_up => '1 day')"
    )
    await su.execute(
        "UPDATE pgtasks.schedule_defs SET every = '1 millisecond' WHERE name = 'legacy'"
    )
    await su.execute("SELECT pgtasks.advance_clock('1 hour')")
    assert await wk.fetchval("SELECT pgtasks.fire_every_schedules()") == 200
    counts = dict(await su.fetch("SELECT schedule, count(*) FROM pgtasks.tasks GROUP BY schedule"))
    assert counts == {"every-second": 100, "legacy": 100}
    skipped = dict(await su.fetch("SELECT name, skipped FROM pgtasks.schedule_defs"))
    # An hour of ticks (less the part of a second before the first one) went uncounted
    # nowhere: what did not run is in skipped.
    assert (
        3_499 <= skipped["every-second"] <= 3_501 and 3_590_000 < skipped["legacy"] < 3_600_000
    ), skipped
    # The newest ticks ran, and the schedule goes on from now.
    newest = await su.fetchval(
        "SELECT max(schedule_tick) FROM pgtasks.tasks WHERE schedule = 'every-second'"
    )
    assert newest > await su.fetchval("SELECT pgtasks.now() - interval '2 seconds'")


async def test_a_worker_prunes_with_the_configured_retention_only(login, su):
    wk, admin = await login("pgtasks_worker"), await login("pgtasks_admin")
    (task,) = await claimed(su)
    await su.execute("SELECT pgtasks.finish_task($1, $2)", task["id"], task["lease_token"])
    history = "SELECT count(*) FROM pgtasks.task_events WHERE task_id = $1"
    events = await su.fetchval(history, task["id"])
    await refused(wk, "PT120", "SELECT pgtasks.prune_finished(interval '0', 100000)")
    await refused(wk, "PT120", "SELECT pgtasks.prune_finished(interval '6 days')")
    assert await wk.fetchval("SELECT pgtasks.prune_finished(interval '30 days')") == 0
    assert await wk.fetchval("SELECT pruned FROM pgtasks.maintain()") == 0
    assert await su.fetchval(history, task["id"]) == events
    assert await admin.fetchval("SELECT pgtasks.prune_finished(interval '0')") == 1


async def test_a_task_types_policy_is_changed_by_its_role_or_an_admin_only(login, su):
    billing, attacker, admin = [
        await login(r) for r in ("pgtasks_worker", "pgtasks_worker", "pgtasks_admin")
    ]
    sub = await login("pgtasks_submitter")
    register = (
        "SELECT pgtasks.register_task_type('billing.invoice', queue => $1, max_retries => $2,"
        " worker_id => $3)"
    )
    await billing.execute(register, "billing", 5, "billing-1")
    # Re-declaring the same policy, as every worker does at start, works for anyone.
    await attacker.execute(register, "billing", 5, "attacker-1")
    msg = await refused(attacker, "PT125", register, "attacker-q", 5, "attacker-1")
    assert "billing.invoice" in msg
    await refused(attacker, "PT125", register, "billing", 0, "attacker-1")
    row = await su.fetchrow("SELECT * FROM pgtasks.task_types WHERE task_type = 'billing.invoice'")
    assert (row["queue"], row["max_retries"], row["registered_by"]) == ("billing", 5, "billing-1")
    tid = await sub.fetchval("SELECT pgtasks.submit_task('billing.invoice')")
    assert await su.fetchval("SELECT queue FROM pgtasks.tasks WHERE id = $1", tid) == "billing"
    # Its own role's next deploy changes it; so does an admin.
    await billing.execute(register, "billing-v2", 5, "billing-2")
    await admin.execute(register, "billing-v3", 5, None)
    assert (
        await su.fetchval(
            "SELECT queue FROM pgtasks.task_types WHERE task_type = 'billing.invoice'"
        )
        == "billing-v3"
    )


async def test_due_schedules_holds_schedules_briefly(login, su):
    wk = await login("pgtasks_worker")
    await su.execute("SELECT pgtasks.create_schedule('s', 't', every => '1 minute')")
    await su.execute("SELECT pgtasks.advance_clock('2 minutes')")
    await refused(wk, "PT114", "SELECT * FROM pgtasks.due_schedules(1000, interval '1 hour', 'x')")
    await refused(
        wk, "PT114", "SELECT * FROM pgtasks.due_schedules(1000, interval '31 seconds', 'x')"
    )
    assert await su.fetchval("SELECT claimed_until FROM pgtasks.schedule_defs") is None
    (row,) = await wk.fetch("SELECT * FROM pgtasks.due_schedules(1000, interval '30 seconds', 'x')")
    held = await su.fetchval("SELECT claimed_until - pgtasks.now() FROM pgtasks.schedule_defs")
    assert row["name"] == "s" and held <= timedelta(seconds=30)


async def test_unique_keys_belong_to_their_task_type(login, su):
    squatter, producer = await login("pgtasks_submitter"), await login("pgtasks_submitter")
    squat = await squatter.fetchval(
        "SELECT pgtasks.submit_task('squat', unique_key => 'invoice:42',"
        " run_at => now() + interval '99 years')"
    )
    await squatter.fetchval(
        "SELECT pgtasks.submit_task('squat', unique_key => 'invoice:43',"
        " unique_for => interval '100 years')"
    )
    get = (
        "SELECT * FROM pgtasks.submit_or_get('billing.invoice', unique_key => $1, unique_for => $2)"
    )
    first = await producer.fetchrow(get, "invoice:42", None)
    assert first["created"] and first["id"] != squat
    windowed = await producer.fetchrow(get, "invoice:43", timedelta(days=1))
    assert windowed["created"]
    # Within the type, keys still deduplicate.
    assert dict(await producer.fetchrow(get, "invoice:42", None)) == {
        "id": first["id"],
        "created": False,
    }
    assert dict(await producer.fetchrow(get, "invoice:43", timedelta(days=1))) == {
        "id": windowed["id"], "created": False}  # fmt: skip


# -- inputs that slipped past the bounds ---------------------------------------------------


async def test_invisible_names_are_blank_for_every_name_argument(login, su):
    sub, wk, admin = [await login(r) for r in ROLES]
    (task,) = await claimed(su)
    tid, att = task["id"], f"'{task['lease_token']}'"
    before = await su.fetchrow(COUNTS)
    for name in INVISIBLE:
        cases = [
            (sub, "PT101", "SELECT pgtasks.submit_task($1)"),
            (sub, "PT103", "SELECT pgtasks.submit_task('t', queue => $1)"),
            (sub, "PT101", "SELECT pgtasks.submit_tasks($1, ARRAY['{}']::jsonb[])"),
            (sub, "PT303", "SELECT pgtasks.submit_task('t', unique_key => $1)"),
            (sub, "PT304", "SELECT pgtasks.submit_task('t', concurrency_key => $1)"),
            (
                sub,
                "PT502",
                "SELECT pgtasks.submit_workflow(jsonb_build_object('nodes', jsonb_build_array("
                "jsonb_build_object('name', $1::text, 'type', 't'))))",
            ),
            (
                sub,
                "PT501",
                "SELECT pgtasks.submit_workflow(jsonb_build_object('name', $1::text, 'nodes', "
                "jsonb_build_array(jsonb_build_object('name', 'a', 'type', 't'))))",
            ),
            (wk, "PT101", "SELECT pgtasks.register_task_type($1)"),
            (wk, "PT103", "SELECT pgtasks.register_task_type('t', queue => $1)"),
            (wk, "PT121", "SELECT pgtasks.register_task_type('t', worker_id => $1)"),
            (wk, "PT121", "SELECT * FROM pgtasks.claim_tasks($1)"),
            (wk, "PT121", "SELECT * FROM pgtasks.heartbeat($1, '{}', '{}')"),
            (wk, "PT121", "SELECT * FROM pgtasks.finish_and_claim($1, '{}', '{}', '{}', 1)"),
            (wk, "PT121", "SELECT pgtasks.register_worker($1, 'host', 1)"),
            (wk, "PT121", "SELECT pgtasks.unregister_worker($1)"),
            (wk, "PT121", "SELECT * FROM pgtasks.due_schedules(worker_id => $1)"),
            (wk, "PT206", "SELECT pgtasks.register_worker('w1', $1, 1)"),
            (wk, "PT206", "SELECT pgtasks.register_worker('w1', 'host', 1, ARRAY[$1])"),
            (wk, "PT408", "SELECT pgtasks.declare_schedule($1, 't', every => '1 minute')"),
            (wk, "PT101", "SELECT pgtasks.declare_schedule('s', $1, every => '1 minute')"),
            (
                wk,
                "PT103",
                "SELECT pgtasks.declare_schedule('s', 't', every => '1 minute', queue => $1)",
            ),
            (admin, "PT408", "SELECT pgtasks.create_schedule($1, 't', every => '1 minute')"),
            (admin, "PT103", "SELECT pgtasks.configure(default_queue => $1)"),
            (admin, "PT103", "SELECT pgtasks.configure_queue($1, max_running => 1)"),
            (admin, "PT103", "SELECT pgtasks.pause_queue($1)"),
            (wk, "PT109", f"SELECT pgtasks.checkpoint({tid}, {att}, $1)"),
            (wk, "PT124", f"SELECT pgtasks.log({tid}, {att}, $1, 'message')"),
            (wk, "PT124", f"SELECT pgtasks.log_many({tid}, {att}, ARRAY[$1], ARRAY['m'])"),
            (
                wk,
                "PT124",
                f"SELECT pgtasks.log_many({tid}, {att}, '{{INFO}}', '{{m}}', loggers => ARRAY[$1])",
            ),
        ]
        for conn, state, sql in cases:
            await refused(conn, state, sql, name)
    assert await su.fetchrow(COUNTS) == before
    # A visible name with an invisible character in it is a name.
    await sub.fetchval("SELECT pgtasks.submit_task($1)", "t\u200e")


async def test_times_far_from_now_are_refused_for_every_time_argument(login, su):
    sub, wk, admin = [await login(r) for r in ROLES]
    (task,) = await claimed(su)
    tid, att = task["id"], f"'{task['lease_token']}'"
    cancelled = await su.fetchval("SELECT pgtasks.submit_task('t')")
    await su.execute("SELECT pgtasks.cancel_task($1)", cancelled)
    log = (
        f"SELECT pgtasks.log_many({tid}, {att}, '{{INFO,INFO}}', '{{m,n}}',"
        " ARRAY[now()::text, $1::text]::timestamptz[])"
    )
    entries = [
        (sub, "SELECT pgtasks.submit_task('t', run_at => $1::text::timestamptz)"),
        (sub, "SELECT pgtasks.submit_tasks('t', '{}', run_at => $1::text::timestamptz)"),
        (wk, log),
        (wk, f"SELECT pgtasks.yield_task({tid}, {att}, $1::text::timestamptz)"),
        (admin, f"SELECT pgtasks.retry_task({cancelled}, $1::text::timestamptz)"),
    ]
    before = await su.fetchrow(COUNTS)
    for far in ("infinity", "-infinity", "10000-01-01", "0900-01-01", "2200-01-01"):
        for conn, sql in entries:
            await refused(conn, "PT105", sql, far)
    assert await su.fetchrow(COUNTS) == before
    an_hour_ago = await su.fetchval("SELECT (now() - interval '1 hour')::text")
    assert await wk.fetchval(log, an_hour_ago) == 2


async def test_a_cron_that_never_fires_is_refused(login, su):
    wk, admin = await login("pgtasks_worker"), await login("pgtasks_admin")
    for cron in (
        "0 0 30 2 *",
        "0 0 31 4,6,9,11 *",
        "0 0 30,31 feb *",
        "0 0 31 2-4/2 *",
        "0 0 31 2 1",
        "0 0 31-31 feb *",
    ):
        await refused(wk, "PT401", "SELECT pgtasks.declare_schedule('s', 't', cron => $1)", cron)
        await refused(admin, "PT401", "SELECT pgtasks.create_schedule('s', 't', cron => $1)", cron)
    assert await su.fetchval("SELECT count(*) FROM pgtasks.schedule_defs") == 0
    for cron in ("0 0 29 2 *", "0 0 31 */2 *", "0 0 30 1-2 *", "0 0 * 2 *", "@monthly"):
        await wk.execute("SELECT pgtasks.declare_schedule('s', 't', cron => $1)", cron)


async def test_a_range_of_one_value_fires_at_that_value_only(login, su):
    """croniter reads '5-5' as '*': stored as written, '0 5-5 * * *' fired every hour."""
    wk = await login("pgtasks_worker")
    await wk.execute("SELECT pgtasks.declare_schedule('s', 't', cron => '0 5-5 * * mon-mon')")
    assert await su.fetchval("SELECT cron FROM pgtasks.schedule_defs") == "0 5 * * 1"


async def test_worker_ids_are_bounded_for_every_function_that_takes_one(login, su):
    wk = await login("pgtasks_worker")
    big = "w" * 100_000
    before = await su.fetchrow(COUNTS)
    for sql in (
        "SELECT * FROM pgtasks.claim_tasks($1)",
        "SELECT * FROM pgtasks.heartbeat($1, '{}', '{}')",
        "SELECT * FROM pgtasks.finish_and_claim($1, '{}', '{}', '{}', 1)",
        "SELECT pgtasks.register_worker($1, 'host', 1)",
        "SELECT pgtasks.unregister_worker($1)",
        "SELECT pgtasks.register_task_type('t', worker_id => $1)",
        "SELECT * FROM pgtasks.due_schedules(worker_id => $1)",
    ):
        await refused(wk, "PT121", sql, big)
        await refused(wk, "PT121", sql, "w" * 256)
    assert await su.fetchrow(COUNTS) == before
    await wk.execute("SELECT pgtasks.register_task_type('t', worker_id => $1)", "w" * 255)


# -- the upgrade ---------------------------------------------------------------------------


async def test_the_upgrade_brings_rows_stored_before_the_bounds_within_them(server):
    """The bounds' migration on a database that accepted what it now refuses."""
    bounds = next(m.version for m in available() if m.name == "bounds")
    name = f"upg_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server.url())
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        await migrate_url(server.url(name), up_to=bounds - 1)
        c = await asyncpg.connect(server.url(name))
        try:
            await c.execute("""
                SELECT pgtasks.create_schedule('burst', 't', every => '1 millisecond');
                SELECT pgtasks.create_schedule('never', 't', cron => '0 0 30 2 *');
                SELECT pgtasks.create_schedule('hourly-by-mistake', 't', cron => '0 5-5 * * *');
                SELECT pgtasks.create_schedule('fine', 't', cron => '0 5 * * *');
                UPDATE pgtasks.schedule_defs SET next_run_at = now() + interval '1 hour'
                 WHERE cron IS NOT NULL;
                SELECT pgtasks.register_task_type('billing.invoice', queue => 'billing');
                SELECT pgtasks.submit_task('billing.invoice', unique_key => 'k',
                                           unique_for => '1 day');
                INSERT INTO pgtasks.unique_windows
                VALUES ('gone', 999999, now() + interval '1 day');
            """)  # fmt: skip
            await migrate_url(server.url(name))
            rows = {r["name"]: r for r in await c.fetch("SELECT * FROM pgtasks.schedule_defs")}
            assert rows["burst"]["every"] == timedelta(seconds=1)
            assert rows["never"]["paused"] and not rows["fine"]["paused"]
            assert rows["hourly-by-mistake"]["cron"] == "0 5 * * *"
            assert rows["hourly-by-mistake"]["next_run_at"] is None
            assert rows["fine"]["next_run_at"] is not None
            windows = await c.fetch("SELECT task_type, unique_key FROM pgtasks.unique_windows")
            assert [tuple(w) for w in windows] == [("billing.invoice", "k")]
            owner = "SELECT owner_role FROM pgtasks.task_types WHERE task_type = 'billing.invoice'"
            assert await c.fetchval(owner) == await c.fetchval("SELECT session_user::text")
        finally:
            await c.close()
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()
