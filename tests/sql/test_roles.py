"""Least-privilege roles: log in as each group role and show what it can and
cannot do. Roles are cluster-wide, so each test makes its own login roles and drops them."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

GROUPS = ("pgtasks_submitter", "pgtasks_worker", "pgtasks_reader", "pgtasks_admin")
TABLES = ("tasks", "task_events", "task_errors", "task_steps", "task_logs", "task_waiters",
          "worker_registry", "event_inbox", "task_pauses", "task_rollup",
          "rollup_state")  # fmt: skip

# Functions no group role may call: the building blocks the granted functions use.
INTERNAL = {
    "check_submit_args", "check_params", "check_params_list", "check_policy", "check_batch",
    "check_max_tasks", "check_worker_id", "check_run_at", "check_result_size", "check_log_size",
    "check_soft_timeout", "worker_versions", "fold_counts",
    "lease_or_default", "submit_policy", "is_blank", "expiry_reason", "lock_expired",
    "rescue_one", "lock_task", "lock_owned_task", "record_failure", "backoff",
    "notify_watchers", "secure_objects", "grant_roles",
    # 0006 schedules
    "check_schedule_name", "check_cron_field", "check_cron", "check_schedule",
    "every_tick_after", "upsert_schedule", "lock_schedule", "enqueue_tick",
    # 0005 (flow control)
    "check_queue_name", "check_flow_args", "drop_idle_queue_settings", "submit_one",
    "claim_limited",
    # 0009 (flow fixes)
    "raise_unique_held", "prune_flow_state",
    # 0012 (workflows)
    "submit_dependent", "release_children", "revive_children",
    # 0017
    "clip_text",
    # 0020
    "pick_ready", "flow_control_in_use",
    # a claim's commit skips the WAL flush; later writes of its transaction keep theirs
    "skip_claim_flush", "keep_durable",
    # the clock: the functions read it as the owner; moving it is the owner's alone
    "now", "advance_clock",
    # owner-only locks, depends_on without parent locks
    "lock_concurrency_key", "create_concurrency_key", "calling_role", "settle_child",
    "settle_new_edges",
    # bounds: JSON clients can decode, log names and times, the caller's rights, cron values
    "json_shape_error", "check_log_lines", "caller_is_admin", "cron_field_values",
    # submit_tasks with unique keys, set-based
    "submit_keyed",
    # events
    "check_event_name",
    # child tasks: run by the settle_children trigger
    "wake_spawners", "cancel_children",
    # the charts' histograms, built and summed by roll_up and task_chart
    "histogram", "histogram_sum",
}  # fmt: skip


@pytest.fixture
async def login(server, dsn, conn) -> AsyncIterator[dict[str, asyncpg.Connection]]:
    """One connection per group role, each logged in as a fresh role granted that group."""
    suffix = uuid.uuid4().hex[:8]
    names = {g: f"{g.removeprefix('pgtasks_')}_{suffix}" for g in GROUPS}
    conns: dict[str, asyncpg.Connection] = {}
    for group, name in names.items():
        await conn.execute(f"CREATE ROLE {name} LOGIN; GRANT {group} TO {name}")
    try:
        for group, name in names.items():
            conns[group.removeprefix("pgtasks_")] = await asyncpg.connect(dsn, user=name)
        yield conns
    finally:
        for c in conns.values():
            await c.close()
        for name in names.values():
            await conn.execute(f"DROP OWNED BY {name}; DROP ROLE {name}")


async def denied(c: asyncpg.Connection, sql: str, *args: object) -> bool:
    try:
        await c.execute(sql, *args)
    except asyncpg.InsufficientPrivilegeError:
        return True
    return False


@pytest.fixture
async def running(conn) -> int:
    tid = await conn.fetchval("SELECT pgtasks.submit_task('t', '{\"secret\": 42}')")
    await conn.fetch("SELECT * FROM pgtasks.claim_tasks('w', max_tasks => 1)")
    return tid


async def test_submitter_submits_and_sees_status_only(login, running):
    s = login["submitter"]
    tid = await s.fetchval("SELECT pgtasks.submit_task('t', '{\"mine\": 1}')")
    assert await s.fetchval(
        "SELECT status::text FROM pgtasks.task_overview WHERE id = $1", tid
    ) == ("PENDING")
    stmt = await s.prepare("SELECT * FROM pgtasks.task_overview")
    cols = {a.name for a in stmt.get_attributes()}
    assert not cols & {"params", "result", "error"}
    for sql in (
        "SELECT params FROM pgtasks.tasks",
        "SELECT * FROM pgtasks.task_status",
        "SELECT * FROM pgtasks.claim_tasks('s')",
        f"SELECT pgtasks.finish_task({running}, '1', '1')",
        f"SELECT pgtasks.cancel_task({running})",
        f"SELECT pgtasks.lock_task({running})",
    ):
        assert await denied(s, sql), sql


async def test_worker_runs_tasks_but_cannot_cancel_or_retry(login, conn, running):
    w = login["worker"]
    tid = await w.fetchval("SELECT pgtasks.submit_task('t')")  # a follow-up task
    rows = await w.fetch("SELECT id, lease_token FROM pgtasks.claim_tasks('w2', max_tasks => 5)")
    assert [r[0] for r in rows] == [tid]
    held = rows[0]["lease_token"]
    await w.execute("SELECT pgtasks.log($1, $2, 'info', 'hi')", tid, held)
    await w.execute("SELECT pgtasks.finish_task($1, $2, '{}')", tid, held)
    assert await w.fetchval("SELECT pgtasks.rescue_expired()") == 0
    for sql in (
        f"SELECT pgtasks.cancel_task({running})",
        f"SELECT pgtasks.retry_task({tid})",
        "SELECT * FROM pgtasks.task_status",
        "UPDATE pgtasks.tasks SET priority = 1",
    ):
        assert await denied(w, sql), sql
    # History names the login role, not the functions' owner.
    users = {r[0] for r in await conn.fetch(
        "SELECT DISTINCT db_user FROM pgtasks.task_events WHERE task_id = $1", tid)}  # fmt: skip
    assert users == {await w.fetchval("SELECT session_user")}


async def test_reader_reads_every_view_but_writes_nothing(login, conn, running):
    r = login["reader"]
    views = [v[0] for v in await conn.fetch(
        "SELECT c.relname FROM pg_class c "
        "WHERE c.relnamespace = 'pgtasks'::regnamespace AND c.relkind = 'v'")]  # fmt: skip
    assert "task_status" in views and "task_overview" in views
    for v in views:
        await r.fetch(f"SELECT * FROM pgtasks.{v} LIMIT 1")
    assert await r.fetchval("SELECT result FROM pgtasks.task_status WHERE id = $1", running) is None
    for sql in (
        "SELECT pgtasks.submit_task('t')",
        f"SELECT pgtasks.cancel_task({running})",
        "SELECT * FROM pgtasks.claim_tasks('r')",
        "DELETE FROM pgtasks.tasks",
    ):
        assert await denied(r, sql), sql


async def test_admin_cancels_and_retries(login, running):
    a = login["admin"]
    assert await a.fetchval("SELECT pgtasks.cancel_task($1)::text", running) == "RUNNING"
    await a.execute("SELECT pgtasks.retry_task($1)", running)
    assert await a.fetchval(
        "SELECT status::text FROM pgtasks.task_status WHERE id = $1", running
    ) == ("PENDING")
    assert await denied(a, "UPDATE pgtasks.tasks SET priority = 1")


@pytest.mark.parametrize("table", TABLES)
async def test_no_role_touches_a_table(login, table):
    for role, c in login.items():
        for sql in (f"SELECT 1 FROM pgtasks.{table} LIMIT 1", f"DELETE FROM pgtasks.{table}"):
            assert await denied(c, sql), (role, sql)


async def test_every_api_function_is_granted_to_a_role_or_internal(conn):
    """A later migration's new function must be given to a role (pgtasks.grant_roles) or
    listed here as internal; it cannot silently stay reachable by nobody or everybody."""
    rows = await conn.fetch(
        """
        SELECT p.proname,
               bool_or(has_function_privilege(g, p.oid, 'EXECUTE')) AS granted
          FROM pg_proc p, unnest($1::text[]) g
         WHERE p.pronamespace = 'pgtasks'::regnamespace
           AND p.prorettype <> 'trigger'::regtype
         GROUP BY p.proname
        """,
        list(GROUPS),
    )
    ungranted = {r[0] for r in rows if not r[1]}
    assert ungranted - INTERNAL == set(), (
        "grant it on its definition in sql/schema/ or list it as internal"
    )
    assert {r[0] for r in rows if r[1]} & INTERNAL == set(), "internal, yet granted"


async def test_a_non_superuser_migrates_with_createrole_and_membership(server, conn):
    """Managed services often give no superuser. Without membership in pgtasks_owner the
    migration stops with PT205 and says what to grant; with it, it applies."""
    from pgtasks.migrations import migrate_url

    suffix = uuid.uuid4().hex[:8]
    role, dbname = f"migrator_{suffix}", f"mig_{suffix}"
    admin = await asyncpg.connect(server.url())
    await admin.execute(f"CREATE ROLE {role} LOGIN CREATEROLE")
    await admin.execute(f"CREATE DATABASE {dbname} OWNER {role}")
    url = server.url(dbname).replace("postgres@", f"{role}@")
    try:
        with pytest.raises(asyncpg.PostgresError) as info:
            await migrate_url(url)
        assert info.value.sqlstate == "PT205"
        assert f"GRANT pgtasks_owner TO {role}" in (info.value.hint or "")
        await admin.execute(f"GRANT pgtasks_owner TO {role}")
        assert [m.version for m in await migrate_url(url)][-1] >= 4
        c = await asyncpg.connect(url)
        try:
            assert await c.fetchval("SELECT pgtasks.submit_task('t')") == 1
            owner = await c.fetchval("SELECT pg_get_userbyid(relowner) FROM pg_class "
                                     "WHERE oid = 'pgtasks.tasks'::regclass")  # fmt: skip
            assert owner == "pgtasks_owner"
        finally:
            await c.close()
    finally:
        await admin.execute(f"DROP DATABASE {dbname} WITH (FORCE)")
        await admin.execute(f"REVOKE pgtasks_owner FROM {role}; DROP ROLE {role}")
        await admin.close()


async def test_schedules_admin_creates_worker_fires_reader_reads(login, conn):
    a, w, r, s = login["admin"], login["worker"], login["reader"], login["submitter"]
    await a.execute(
        "SELECT pgtasks.create_schedule(name => 'e', task_type => 't', every => '1 hour');"
        "SELECT pgtasks.pause_schedule(name => 'e'); SELECT pgtasks.resume_schedule(name => 'e')"
    )
    assert await a.fetchval("SELECT pgtasks.trigger_schedule(name => 'e')") > 0
    # The clock at the first tick: exactly one is due, the next an hour later.
    await conn.execute(
        "SELECT pgtasks.advance_clock(greatest(next_run_at - pgtasks.now(), '1 us'))"
        " FROM pgtasks.schedules"
    )
    assert await w.fetchval("SELECT pgtasks.fire_every_schedules()") == 1
    assert await w.fetchval(
        "SELECT pgtasks.declare_schedule(name => 'd', task_type => 't', every => '1 minute')"
    )
    assert await r.fetchval("SELECT count(*) FROM pgtasks.schedules") == 2
    for c, sql in (
        (w, "SELECT pgtasks.create_schedule(name => 'x', task_type => 't', every => '1 minute')"),
        (w, "SELECT pgtasks.drop_schedule(name => 'e')"),
        (r, "SELECT * FROM pgtasks.due_schedules()"),
        (s, "SELECT * FROM pgtasks.schedules"),
        (s, "SELECT pgtasks.trigger_schedule(name => 'e')"),
        (w, "SELECT pgtasks.enqueue_tick(NULL, now())"),
    ):
        assert await denied(c, sql), sql
    await a.execute("SELECT pgtasks.drop_schedule(name => 'e')")


async def test_each_role_gets_its_workflow_functions(login):
    a, b = {"name": "a", "type": "t"}, {"name": "b", "type": "t", "after": ["a"]}
    spec = json.dumps({"nodes": [a, b]})
    out = json.loads(
        await login["submitter"].fetchval(
            "SELECT pgtasks.submit_workflow($1::text::jsonb)::text", spec
        )
    )
    wf, b = out["workflow_id"], out["nodes"]["b"]
    # parent_results is the worker's, fenced by the child's lease token (b is not running).
    with pytest.raises(asyncpg.PostgresError) as info:
        await login["worker"].fetchval("SELECT pgtasks.parent_results($1, 'x')::text", b)
    assert info.value.sqlstate == "PT002"
    assert await login["reader"].fetchval("SELECT state FROM pgtasks.workflows WHERE id = $1", wf)
    assert len(await login["reader"].fetch("SELECT * FROM pgtasks.workflow_graph($1)", wf)) == 2
    for role, sql in (
        ("submitter", f"SELECT pgtasks.cancel_workflow({wf})"),
        ("reader", f"SELECT pgtasks.cancel_workflow({wf})"),
        ("submitter", "SELECT * FROM pgtasks.workflows"),
        ("reader", f"SELECT pgtasks.submit_workflow('{spec}')"),
        ("reader", f"SELECT pgtasks.parent_results({b}, 'x')"),
        ("submitter", f"SELECT pgtasks.parent_results({b}, 'x')"),
    ):
        assert await denied(login[role], sql), (role, sql)
    assert await login["admin"].fetchval(f"SELECT pgtasks.cancel_workflow({wf})") == 2
