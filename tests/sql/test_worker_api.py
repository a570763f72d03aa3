"""The worker-facing API of sql/0003: finish_and_claim, maintain, task_steps_of, the read
views, and the argument checks that keep a careless client from breaking anything."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest

from pgtasks import db
from tests.sql.helpers import TOKEN, expire_lease, raises, token, tokens

FINISH_AND_CLAIM = (
    "SELECT * FROM pgtasks.finish_and_claim('w', $1::bigint[], $2::text[], $3::jsonb[],"
    " claim_max => $4)"
)


async def submit(conn: asyncpg.Connection, n: int = 1, **kw: object) -> list[int]:
    args = "".join(f", {k} => {v}" for k, v in kw.items())
    return [await conn.fetchval(f"SELECT pgtasks.submit_task('t'{args})") for _ in range(n)]


async def claim(conn: asyncpg.Connection, n: int = 1) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM pgtasks.claim_tasks('w', max_tasks => $1)", n)


async def counts(conn: asyncpg.Connection) -> dict[str, int]:
    return dict(await conn.fetch("SELECT status::text, count(*) FROM pgtasks.tasks GROUP BY 1"))


# -- finish_and_claim -------------------------------------------------------------------


async def test_finish_and_claim_returns_rejections_then_claims_in_order(conn):
    a, b = await submit(conn, 2)
    await claim(conn, 2)
    low, high = await submit(conn, 1), await submit(conn, 1, priority=5)
    rows = await conn.fetch(
        FINISH_AND_CLAIM, [a, b], [await token(conn, a), "7"], ["ok", "stale"], 5
    )
    assert [(r["rejected_task_id"], r["id"]) for r in rows] == [
        (b, None), (None, high[0]), (None, low[0]),
    ]  # fmt: skip
    assert rows[0]["task_type"] is None and rows[0]["attempt"] is None
    assert rows[0]["lease_token"] is None
    assert rows[1]["attempt"] == 1 and rows[1]["deadline"] is not None
    assert rows[1]["lease_token"] == await token(conn, high[0])
    assert await conn.fetchval("SELECT result FROM pgtasks.tasks WHERE id = $1", a) == "ok"
    assert await counts(conn) == {"DONE": 1, "RUNNING": 3}


async def test_finish_and_claim_with_claim_max_zero_only_finishes(conn):
    (a,) = await submit(conn)
    await claim(conn)
    await submit(conn)
    assert await conn.fetch(FINISH_AND_CLAIM, [a], [await token(conn, a)], ["1"], 0) == []
    assert await counts(conn) == {"DONE": 1, "PENDING": 1}


async def test_finish_and_claim_with_nothing_to_finish_claims_like_claim_tasks(conn):
    ids = await submit(conn, 3)
    rows = await conn.fetch(FINISH_AND_CLAIM, [], [], [], 2)
    assert [r["id"] for r in rows] == ids[:2]


ROW_AS_WRITTEN = """
SELECT status::text, result, finished_at IS NOT NULL AS finished, worker_id,
       lease_expires_at - started_at AS lease, deadline - started_at AS deadline,
       started_at IS NOT NULL AS started, attempt, progress_current, progress_total,
       lease_token IS NOT NULL AS has_token
  FROM pgtasks.tasks WHERE id = $1
"""


async def test_one_statement_and_two_statements_write_the_same_rows(conn):
    """sql/0020 finishes and claims in one UPDATE unless the call needs the two statements
    of 0003 (here: claim_max 0 sends it there). Twin tasks through either path end up with
    the same columns, finished and claimed alike."""
    twins = []
    for _ in range(2):
        (tid,) = await submit(conn)
        await claim(conn)
        await conn.execute(f"SELECT pgtasks.report_progress($1, {TOKEN}, 3, 10)", tid)
        twins.append(tid)
    one, two = twins
    await submit(conn)
    # one statement: finish `one` and claim the ready task
    rows = await conn.fetch(FINISH_AND_CLAIM, [one], [await token(conn, one)], ['{"n": 1}'], 1)
    assert [r["rejected_task_id"] for r in rows] == [None] and rows[0]["attempt"] == 1
    claimed_one = rows[0]["id"]
    await submit(conn)
    # two statements: finish `two` alone, then claim with claim_tasks
    assert (
        await conn.fetch(FINISH_AND_CLAIM, [two], await tokens(conn, [two]), ['{"n": 1}'], 0) == []
    )
    (claimed_two,) = [r["id"] for r in await claim(conn)]
    assert dict(await conn.fetchrow(ROW_AS_WRITTEN, one)) == dict(
        await conn.fetchrow(ROW_AS_WRITTEN, two)
    )
    assert dict(await conn.fetchrow(ROW_AS_WRITTEN, claimed_one)) == dict(
        await conn.fetchrow(ROW_AS_WRITTEN, claimed_two)
    )
    done = await conn.fetchrow(ROW_AS_WRITTEN, one)
    assert done["status"] == "DONE" and done["progress_current"] == 10  # progress completed


async def test_a_finish_whose_task_went_back_to_pending_is_rejected_and_the_task_reclaimed(conn):
    """The one-statement path: a stale finish (the lease was rescued, the task is ready
    again) is rejected, and the same call may claim the task again, at the next attempt."""
    (a,) = await submit(conn)
    (first,) = await claim(conn)
    await expire_lease(conn, a)
    assert await conn.fetchval("SELECT pgtasks.rescue_expired()") == 1
    await conn.execute("UPDATE pgtasks.tasks SET run_at = now() WHERE id = $1", a)
    rows = await conn.fetch(FINISH_AND_CLAIM, [a], [first["lease_token"]], ['"late"'], 5)
    assert [(r["rejected_task_id"], r["id"], r["attempt"]) for r in rows] == [
        (a, None, None), (None, a, 2),
    ]  # fmt: skip
    assert rows[1]["lease_token"] not in (None, first["lease_token"])
    assert await conn.fetchval("SELECT result FROM pgtasks.tasks WHERE id = $1", a) is None


@pytest.mark.parametrize(
    ("args", "sqlstate"),
    [
        (f"ARRAY[$1::bigint], ARRAY[{TOKEN}], ARRAY['1'::jsonb], claim_max => NULL", "PT115"),
        (f"ARRAY[$1::bigint], ARRAY[{TOKEN}], ARRAY['1'::jsonb], claim_max => -1", "PT115"),
        (f"ARRAY[$1::bigint], ARRAY[{TOKEN}], ARRAY[]::jsonb[], claim_max => 1", "PT116"),
        (
            f"ARRAY[$1::bigint], ARRAY[{TOKEN}], ARRAY['1'::jsonb], claim_max => 1,"
            " lease => interval '0'",
            "PT114",
        ),
    ],
)
async def test_finish_and_claim_bad_arguments_write_nothing(conn, args, sqlstate):
    (a,) = await submit(conn)
    await claim(conn)
    await submit(conn)
    await raises(conn, f"SELECT * FROM pgtasks.finish_and_claim('w', {args})", sqlstate, a)
    assert await counts(conn) == {"RUNNING": 1, "PENDING": 1}


# -- argument checks on the hot path ----------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "sqlstate"),
    [
        ("SELECT * FROM pgtasks.claim_tasks('w', max_tasks => NULL)", "PT115"),
        ("SELECT * FROM pgtasks.claim_tasks('w', max_tasks => 0)", "PT115"),
        ("SELECT * FROM pgtasks.claim_tasks('w', max_tasks => -3)", "PT115"),
        ("SELECT * FROM pgtasks.claim_tasks('w', lease => interval '0')", "PT114"),
        ("SELECT * FROM pgtasks.claim_tasks('w', lease => interval '-1 minute')", "PT114"),
        ("SELECT * FROM pgtasks.claim_tasks('w', lease => 'infinity')", "PT114"),
        ("SELECT * FROM pgtasks.claim_tasks(NULL)", "PT121"),
        ("SELECT * FROM pgtasks.claim_tasks(E' \\t')", "PT121"),
    ],
)
async def test_bad_claims_claim_nothing(conn, sql, sqlstate):
    await submit(conn, 3)
    await raises(conn, sql, sqlstate)
    assert await counts(conn) == {"PENDING": 3}


async def test_lease_defaults_to_the_setting(conn):
    await conn.execute("SELECT pgtasks.configure(default_lease => interval '5 minutes')")
    (a,) = await submit(conn)
    lease = "SELECT lease_expires_at - now() FROM pgtasks.tasks WHERE id = $1"
    async with conn.transaction():  # one now() for the claim and the check
        await claim(conn)
        assert await conn.fetchval(lease, a) == timedelta(minutes=5)
    await conn.execute("SELECT pgtasks.configure(default_lease => interval '7 minutes')")
    async with conn.transaction():
        beat = f"SELECT * FROM pgtasks.heartbeat('w', ARRAY[$1::bigint], ARRAY[{TOKEN}])"
        assert await conn.fetch(beat, a) == []
        assert await conn.fetchval(lease, a) == timedelta(minutes=7)


async def test_heartbeat_with_mismatched_arrays_is_refused(conn):
    a, b = await submit(conn, 2)
    await claim(conn, 2)
    before = await conn.fetch("SELECT lease_expires_at FROM pgtasks.tasks ORDER BY id")
    ta, _ = await tokens(conn, [a, b])
    await raises(conn, "SELECT * FROM pgtasks.heartbeat('w', $1, $2)", "PT116", [a, b], [ta])
    await raises(
        conn, "SELECT * FROM pgtasks.heartbeat('w', $1, $2, interval '0')", "PT114", [a], [ta]
    )
    assert await conn.fetch("SELECT lease_expires_at FROM pgtasks.tasks ORDER BY id") == before


async def test_finish_tasks_with_mismatched_arrays_finishes_nothing(conn):
    a, b = await submit(conn, 2)
    await claim(conn, 2)
    await raises(
        conn,
        "SELECT * FROM pgtasks.finish_tasks($1, $2, $3::jsonb[])",
        "PT116",
        [a, b], await tokens(conn, [a, b]), ["1"],
    )  # fmt: skip
    assert await counts(conn) == {"RUNNING": 2}


async def test_a_null_token_in_a_batch_comes_back_rejected(conn):
    (a,) = await submit(conn)
    await claim(conn)
    rows = await conn.fetch(
        "SELECT * FROM pgtasks.finish_tasks($1, $2, $3::jsonb[])", [a], [None], ["1"]
    )
    assert [r[0] for r in rows] == [a]
    lost = await conn.fetch("SELECT * FROM pgtasks.heartbeat('w', $1, $2)", [a], [None])
    assert [r[0] for r in lost] == [a]
    assert await counts(conn) == {"RUNNING": 1}


@pytest.mark.parametrize(
    "call",
    [
        "pgtasks.finish_task($1, NULL, '{\"forged\": true}')",
        "pgtasks.fail_task($1, NULL, 'x')",
        "pgtasks.yield_task($1, NULL)",
        "pgtasks.checkpoint($1, NULL, 'step')",
        "pgtasks.report_progress($1, NULL, 1)",
        "pgtasks.log($1, NULL, 'INFO', 'forged')",
        "pgtasks.log_many($1, NULL, ARRAY['INFO'], ARRAY['forged'])",
        "* FROM pgtasks.task_steps_of($1, NULL)",
        "pgtasks.parent_results($1, NULL)",
    ],
)
async def test_a_null_token_never_passes_fencing(conn, call):
    """A NULL token is no token: finish_task(id, NULL, ...) must not finish a task that
    another worker owns."""
    (a,) = await submit(conn)
    await claim(conn)
    await raises(conn, f"SELECT {call}", "PT117", a)
    row = await conn.fetchrow(
        "SELECT status::text, result, progress_current FROM pgtasks.tasks WHERE id = $1", a
    )
    assert tuple(row) == ("RUNNING", None, None)
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.task_logs") == 0


async def test_fail_task_rejects_an_absurd_retry_delay(conn):
    (a,) = await submit(conn)
    await claim(conn)
    fail = f"SELECT pgtasks.fail_task($1, {TOKEN}, 'x', retry_delay => $2::text::interval)"
    for delay in ("infinity", "-1 second", "200 years"):
        await raises(conn, fail, "PT119", a, delay)
    assert await counts(conn) == {"RUNNING": 1}


# -- task_steps_of ----------------------------------------------------------------------


async def test_task_steps_of_is_fenced(conn):
    (a,) = await submit(conn)
    (first,) = await claim(conn)
    old = first["lease_token"]
    await conn.execute("SELECT pgtasks.checkpoint($1, $2, 'download', '{\"n\": 1}')", a, old)
    await conn.execute("SELECT pgtasks.yield_task($1, $2)", a, old)
    await raises(conn, "SELECT * FROM pgtasks.task_steps_of($1, $2)", "PT002", a, old)
    (row,) = await claim(conn)
    assert row["has_steps"] and row["attempt"] == 2
    new = row["lease_token"]
    steps = await conn.fetch("SELECT * FROM pgtasks.task_steps_of($1, $2)", a, new)
    assert [(s["name"], s["result"]) for s in steps] == [("download", {"n": 1})]
    assert steps[0]["db_now"] is not None
    await raises(conn, "SELECT * FROM pgtasks.task_steps_of($1, $2)", "PT003", a + 1000, new)
    await raises(conn, "SELECT * FROM pgtasks.task_steps_of($1, $2)", "PT002", a, old)


# -- maintain and pruning ---------------------------------------------------------------


async def test_maintain_rescues_and_prunes_in_one_call(conn):
    expired, done = await submit(conn, 2)
    await claim(conn, 2)
    await expire_lease(conn, expired)
    await conn.execute(f"SELECT pgtasks.finish_task($1, {TOKEN}, '1')", done)
    await conn.execute(
        "UPDATE pgtasks.tasks SET finished_at = now() - interval '8 days' WHERE id = $1", done
    )
    row = await conn.fetchrow("SELECT * FROM pgtasks.maintain()")
    assert tuple(row) == (1, 1)
    assert await counts(conn) == {"COMMIT": 1}
    assert tuple(await conn.fetchrow("SELECT * FROM pgtasks.maintain()")) == (0, 0)


async def test_maintain_returns_at_once_while_another_call_runs(conn, dsn):
    (a,) = await submit(conn)
    await claim(conn)
    await expire_lease(conn, a)
    other = await db.connect(dsn)
    try:
        async with other.transaction():
            assert tuple(await other.fetchrow("SELECT * FROM pgtasks.maintain()")) == (1, 0)
            # still inside the other call's transaction: this one does not queue behind it
            assert tuple(await conn.fetchrow("SELECT * FROM pgtasks.maintain()")) == (0, 0)
    finally:
        await other.close()


async def test_prune_defaults_to_the_retention_setting(conn):
    a, b = await submit(conn, 2)
    await claim(conn, 2)
    finish = "SELECT * FROM pgtasks.finish_tasks($1, $2, ARRAY['1', '2']::jsonb[])"
    await conn.execute(finish, [a, b], await tokens(conn, [a, b]))
    await conn.execute(
        "UPDATE pgtasks.tasks SET finished_at = now() - interval '2 days' WHERE id = $1", a
    )
    assert await conn.fetchval("SELECT pgtasks.prune_finished()") == 0  # 7 days by default
    await conn.execute("SELECT pgtasks.configure(retention => interval '1 day')")
    assert await conn.fetchval("SELECT pgtasks.prune_finished()") == 1
    await raises(conn, "SELECT pgtasks.prune_finished(interval '-1 day')", "PT120")
    await raises(conn, "SELECT pgtasks.prune_finished(max_tasks => NULL)", "PT115")
    await raises(conn, "SELECT pgtasks.rescue_expired(0)", "PT115")
    await raises(conn, "SELECT * FROM pgtasks.maintain(NULL)", "PT115")


# -- read views and history -------------------------------------------------------------


async def test_log_and_error_views(conn):
    (a,) = await submit(conn)
    await claim(conn)
    await conn.execute(f"SELECT pgtasks.log_many($1, {TOKEN}, ARRAY['info', 'warning'],"
                       " ARRAY['a', 'b'], loggers => ARRAY['x', NULL])", a)  # fmt: skip
    await conn.execute(f"SELECT pgtasks.fail_task($1, {TOKEN}, 'boom', 'Traceback ...')", a)
    lines = await conn.fetch("SELECT task_id, attempt, level, message, logger FROM "
                             "pgtasks.task_log_lines ORDER BY id")  # fmt: skip
    assert [tuple(r) for r in lines] == [(a, 1, "INFO", "a", "x"), (a, 1, "WARNING", "b", None)]
    errors = await conn.fetch("SELECT task_id, attempt, error, traceback FROM "
                              "pgtasks.task_attempt_errors")  # fmt: skip
    assert [tuple(r) for r in errors] == [(a, 1, "boom", "Traceback ...")]


async def test_history_records_the_session_user(conn):
    """With SET ROLE (or SECURITY DEFINER functions) current_user is not who logged in."""
    await conn.execute(
        """
        CREATE ROLE pgtasks_test_role;
        GRANT USAGE ON SCHEMA pgtasks TO pgtasks_test_role;
        GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA pgtasks TO pgtasks_test_role;
        GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA pgtasks TO pgtasks_test_role;
        SET ROLE pgtasks_test_role;
        """
    )
    try:
        (a,) = await submit(conn)
    finally:
        await conn.execute(
            "RESET ROLE; DROP OWNED BY pgtasks_test_role; DROP ROLE pgtasks_test_role"
        )
    who = await conn.fetchval("SELECT db_user FROM pgtasks.task_events WHERE task_id = $1", a)
    assert who == await conn.fetchval("SELECT session_user")
