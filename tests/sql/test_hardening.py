"""Hardening: planted functions are never called, hand-written SQL cannot bypass fencing,
the transition rule or the history, and size limits hold."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from pgtasks import db
from tests.sql.helpers import TOKEN, token


async def running_task(conn: asyncpg.Connection, worker: str = "w") -> int:
    tid = await conn.fetchval("SELECT pgtasks.submit_task('t')")
    rows = await conn.fetch("SELECT id FROM pgtasks.claim_tasks($1, max_tasks => 1)", worker)
    assert [r[0] for r in rows] == [tid]
    return tid


async def sqlstate_of(conn: asyncpg.Connection, sql: str, *args: object) -> str:
    with pytest.raises(asyncpg.PostgresError) as info:
        await conn.execute(sql, *args)
    return info.value.sqlstate


# -- search_path hijack ---------------------------------------------------------------------

# Better matches than the built-ins for the calls our functions make: an exact signature
# beats pg_catalog's numeric/variadic/polymorphic ones when `public` is searched.
SHADOWS = """
CREATE TABLE public.shadow_calls (fn text, at timestamptz DEFAULT clock_timestamp());
GRANT INSERT, SELECT ON public.shadow_calls TO PUBLIC;
CREATE FUNCTION public.power(integer, integer) RETURNS double precision LANGUAGE plpgsql AS
  $$ BEGIN INSERT INTO public.shadow_calls (fn) VALUES ('power'); RETURN 1; END $$;
CREATE FUNCTION public.format(text, text) RETURNS text LANGUAGE plpgsql AS
  $$ BEGIN INSERT INTO public.shadow_calls (fn) VALUES ('format2'); RETURN $1; END $$;
CREATE FUNCTION public.format(text, interval, text) RETURNS text LANGUAGE plpgsql AS
  $$ BEGIN INSERT INTO public.shadow_calls (fn) VALUES ('format3'); RETURN $1; END $$;
CREATE FUNCTION public.upper(text) RETURNS text LANGUAGE plpgsql AS
  $$ BEGIN INSERT INTO public.shadow_calls (fn) VALUES ('upper'); RETURN $1; END $$;
CREATE FUNCTION public.cardinality(text[]) RETURNS integer LANGUAGE plpgsql AS
  $$ BEGIN INSERT INTO public.shadow_calls (fn) VALUES ('cardinality'); RETURN 0; END $$;
CREATE FUNCTION public.array_length(jsonb[], integer) RETURNS integer LANGUAGE plpgsql AS
  $$ BEGIN INSERT INTO public.shadow_calls (fn) VALUES ('array_length'); RETURN 0; END $$;
CREATE FUNCTION public.status_eq(pgtasks.status, pgtasks.status) RETURNS boolean
  LANGUAGE plpgsql AS
  $$ BEGIN INSERT INTO public.shadow_calls (fn) VALUES ('='); RETURN $1::text = $2::text; END $$;
CREATE OPERATOR public.= (LEFTARG = pgtasks.status, RIGHTARG = pgtasks.status,
                          FUNCTION = public.status_eq);
CREATE FUNCTION public.status_ne(pgtasks.status, pgtasks.status) RETURNS boolean
  LANGUAGE plpgsql AS
  $$ BEGIN INSERT INTO public.shadow_calls (fn) VALUES ('<>'); RETURN $1::text <> $2::text; END $$;
CREATE OPERATOR public.<> (LEFTARG = pgtasks.status, RIGHTARG = pgtasks.status,
                           FUNCTION = public.status_ne);
"""


@pytest.fixture
async def attacker(server, dsn, conn):
    """A role with CREATE on schema public (PostgreSQL <= 14's default for everyone) and
    USAGE on pgtasks (any granted pgtasks role has it) plants shadows in public."""
    name = f"attacker_{uuid.uuid4().hex[:8]}"
    await conn.execute(f"CREATE ROLE {name} LOGIN; GRANT pgtasks_worker TO {name}")
    await conn.execute(f"GRANT CREATE ON SCHEMA public TO {name}")
    c = await asyncpg.connect(dsn, user=name)
    try:
        # Planting in pgtasks itself is refused: only its owner may create there.
        assert await sqlstate_of(c, "CREATE FUNCTION pgtasks.x() RETURNS int LANGUAGE sql "
                                    "AS 'SELECT 1'") == "42501"  # fmt: skip
        await c.execute(SHADOWS)
    finally:
        await c.close()
    yield name
    await conn.execute(
        "DROP OPERATOR public.= (pgtasks.status, pgtasks.status);"
        "DROP OPERATOR public.<> (pgtasks.status, pgtasks.status);"
        f"REVOKE ALL ON SCHEMA public FROM {name};"
    )
    await conn.execute(f"DROP OWNED BY {name}; DROP ROLE {name}")


async def test_planted_functions_and_operators_are_never_called(dsn, attacker):
    victim = await db.connect(dsn)
    try:
        # The worst search_path a caller can have: public before pg_catalog.
        await victim.execute("SET search_path = public, pg_catalog")
        # The shadows work: unqualified calls on this connection do reach them.
        await victim.fetchval("SELECT power(2, 3)")
        await victim.fetchval("SELECT 'PENDING'::pgtasks.status = 'PENDING'::pgtasks.status")
        assert await victim.fetchval("SELECT count(*) FROM public.shadow_calls") == 2
        await victim.execute("DELETE FROM public.shadow_calls")

        # Failing tasks (backoff -> power), rescue (format), claims and every worker write.
        ids = await victim.fetch(
            "SELECT * FROM pgtasks.submit_tasks('t', ARRAY['{}', '{}', '{}', '{}', '{}']::jsonb[])"
        )
        a, b, c, d, e = [r[0] for r in ids]
        one = await victim.fetchval("SELECT pgtasks.submit_task('t', '{}', queue => 'q')")
        claimed = await victim.fetch(
            "SELECT id, lease_token FROM pgtasks.claim_tasks('w', max_tasks => 10)"
        )
        assert len(claimed) == 6
        tok = dict(claimed)
        await victim.fetch(
            "SELECT * FROM pgtasks.heartbeat('w', $1, $2)",
            [r[0] for r in claimed], [r[1] for r in claimed],
        )  # fmt: skip
        await victim.execute("SELECT pgtasks.fail_task($1, $2, 'boom')", a, tok[a])
        await victim.execute("SELECT pgtasks.checkpoint($1, $2, 'step', '{}')", b, tok[b])
        await victim.execute("SELECT pgtasks.report_progress($1, $2, 1, 2, 'half')", b, tok[b])
        await victim.execute("SELECT pgtasks.log($1, $2, 'info', 'hello')", b, tok[b])
        await victim.execute(
            "SELECT pgtasks.log_many($1, $2, ARRAY['info'], ARRAY['x'], loggers => ARRAY['l'])",
            b, tok[b],
        )  # fmt: skip
        await victim.fetch("SELECT * FROM pgtasks.task_steps_of($1, $2)", b, tok[b])
        await victim.execute("SELECT pgtasks.finish_task($1, $2, '{}')", b, tok[b])
        await victim.fetch(
            "SELECT * FROM pgtasks.finish_tasks(ARRAY[$1::bigint], ARRAY[$2], ARRAY['1'::jsonb])",
            c, tok[c],
        )  # fmt: skip
        await victim.execute("SELECT pgtasks.cancel_task($1)", d)
        await victim.execute("SELECT pgtasks.retry_task($1)", d)
        await victim.execute("SELECT pgtasks.yield_task($1, $2)", one, tok[one])
        # Expire the last lease and rescue it (the rescue message goes through format()).
        await victim.execute(
            "UPDATE pgtasks.tasks SET lease_expires_at = now() - interval '1 second' WHERE id = $1",
            e,
        )
        assert await victim.fetchval("SELECT pgtasks.rescue_expired()") == 1
        await victim.fetch("SELECT * FROM pgtasks.transitions")
        await victim.fetchval("SELECT pgtasks.next_run_at()")
        await victim.execute("SELECT pgtasks.prune_finished(interval '0 seconds')")
        if await victim.fetchval("SELECT to_regproc('pgtasks.maintain') IS NOT NULL"):
            await victim.fetch("SELECT * FROM pgtasks.maintain()")

        calls = await victim.fetch("SELECT fn FROM public.shadow_calls")
        assert [r[0] for r in calls] == []
        statuses = dict(
            await victim.fetch(
                "SELECT id, status::text FROM pgtasks.tasks WHERE id = ANY($1)", [a, d, e]
            )
        )
        assert statuses == {a: "COMMIT", d: "PENDING", e: "COMMIT"}
    finally:
        await victim.close()


async def test_functions_that_disable_a_planner_method_also_disable_jit(conn):
    """Before PostgreSQL 18 a disabled method costs 1e10, so a plan that still uses one is
    JIT-compiled on every call where the server has LLVM: 0008's claim took 150 ms instead
    of 4 on Debian's PostgreSQL 15 (sql/0014). The rule holds for later functions too."""
    rows = await conn.fetch(
        """
        SELECT p.oid::regprocedure::text AS fn FROM pg_proc p
         WHERE p.pronamespace = 'pgtasks'::regnamespace
           AND EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'enable\\_%=off')
           AND NOT coalesce('jit=off' = ANY (p.proconfig), false)
        """
    )
    assert [r["fn"] for r in rows] == []
    steered = await conn.fetchval(
        "SELECT count(*) FROM pg_proc p WHERE p.pronamespace = 'pgtasks'::regnamespace"
        " AND 'jit=off' = ANY (p.proconfig)"
    )
    assert steered >= 4  # claim_tasks, claim_limited, wake_workers, record_status_changes


async def test_every_function_pins_search_path_and_runs_as_owner(conn):
    """The rule for every later migration too: a function that forgets fails here."""
    rows = await conn.fetch(
        """
        SELECT p.oid::regprocedure::text AS fn, p.prosecdef,
               pg_get_userbyid(p.proowner) AS owner,
               coalesce('search_path=pg_catalog, pgtasks, pg_temp' = ANY (p.proconfig), false)
                   AS pinned,
               has_function_privilege('public', p.oid, 'EXECUTE') AS public_exec
          FROM pg_proc p WHERE p.pronamespace = 'pgtasks'::regnamespace
        """
    )
    # Deliberately SECURITY INVOKER: it changes owners, which only the migrating role can.
    invoker = {"pgtasks.secure_objects()"}
    bad = [
        dict(r) for r in rows
        if not r["pinned"] or r["public_exec"]
        or (r["fn"] not in invoker and (not r["prosecdef"] or r["owner"] != "pgtasks_owner"))
    ]  # fmt: skip
    assert bad == [], "run CALL pgtasks.secure_objects() at the end of the migration"
    assert len(rows) > 30


# -- hand-written SQL ----------------------------------------------------------------------


async def test_attempt_cannot_be_reset_even_on_a_done_task(conn):
    tid = await running_task(conn)
    held = await token(conn, tid)
    await conn.execute("SELECT pgtasks.finish_task($1, $2, '1')", tid, held)
    assert await sqlstate_of(conn, "UPDATE pgtasks.tasks SET attempt = 0 WHERE id = $1", tid) == (
        "PT201"
    )
    # The finished attempt's token was cleared with its lease: it cannot finish it again.
    assert await token(conn, tid) is None
    assert await sqlstate_of(conn, "SELECT pgtasks.finish_task($1, $2, '2')", tid, held) == "PT002"
    assert await conn.fetchval("SELECT result FROM pgtasks.tasks WHERE id = $1", tid) == 1


@pytest.mark.parametrize(
    "change",
    [
        "attempt = attempt + 1",
        "attempt = 5",
        "worker_id = 'someone else'",
        "deadline = deadline + interval '1 hour'",
        "lease_expires_at = deadline + interval '1 second'",
    ],
)
async def test_fencing_columns_of_a_running_task(conn, change):
    tid = await running_task(conn)
    before = await conn.fetchrow("SELECT * FROM pgtasks.tasks WHERE id = $1", tid)
    assert await sqlstate_of(conn, f"UPDATE pgtasks.tasks SET {change} WHERE id = $1", tid) == (
        "PT201"
    )
    assert await conn.fetchrow("SELECT * FROM pgtasks.tasks WHERE id = $1", tid) == before


async def test_attempt_of_a_waiting_task_and_of_an_insert(conn):
    tid = await conn.fetchval("SELECT pgtasks.submit_task('t')")
    assert await sqlstate_of(conn, "UPDATE pgtasks.tasks SET attempt = 7 WHERE id = $1", tid) == (
        "PT201"
    )
    assert await sqlstate_of(
        conn, "INSERT INTO pgtasks.tasks (task_type, attempt) VALUES ('t', 3)"
    ) == ("PT201")


async def test_legal_hand_written_updates_still_pass(conn):
    """What operators and tests do by hand: expire a lease, move run_at, edit priority."""
    tid = await running_task(conn)
    await conn.execute(
        "UPDATE pgtasks.tasks SET lease_expires_at = now() - interval '1 second', priority = 5 "
        "WHERE id = $1",
        tid,
    )
    assert await conn.fetchval("SELECT pgtasks.rescue_expired()") == 1
    await conn.execute("UPDATE pgtasks.tasks SET run_at = now() WHERE id = $1", tid)
    rows = await conn.fetch("SELECT attempt FROM pgtasks.claim_tasks('w2', max_tasks => 1)")
    assert [r[0] for r in rows] == [2]


async def test_a_later_before_trigger_cannot_change_status_unseen(conn):
    """The old check fired on UPDATE OF status only and BEFORE; a trigger that runs after
    it (triggers fire in name order) could turn any update into an illegal transition."""
    await conn.execute(
        """
        CREATE FUNCTION public.sneaky() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN NEW.status := 'DONE'; NEW.finished_at := now(); RETURN NEW; END $$;
        CREATE TRIGGER zz_sneaky BEFORE UPDATE OF priority ON pgtasks.tasks
            FOR EACH ROW EXECUTE FUNCTION public.sneaky();
        """
    )
    tid = await conn.fetchval("SELECT pgtasks.submit_task('t')")
    assert await sqlstate_of(conn, "UPDATE pgtasks.tasks SET priority = 1 WHERE id = $1", tid) == (
        "PT001"
    )
    assert await conn.fetchval("SELECT status::text FROM pgtasks.tasks WHERE id = $1", tid) == (
        "PENDING"
    )
    await conn.execute("DROP TRIGGER zz_sneaky ON pgtasks.tasks")


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE pgtasks.task_events SET to_status = 'DONE'",
        "DELETE FROM pgtasks.task_events",
        "TRUNCATE pgtasks.task_events",
        "UPDATE pgtasks.task_errors SET error = 'nothing to see'",
        "DELETE FROM pgtasks.task_errors",
        "TRUNCATE pgtasks.task_errors CASCADE",
    ],
)
async def test_history_is_append_only(conn, sql):
    tid = await running_task(conn)
    await conn.execute(f"SELECT pgtasks.fail_task($1, {TOKEN}, 'boom')", tid)
    counts = (
        "SELECT (SELECT count(*) FROM pgtasks.task_events),"
        " (SELECT count(*) FROM pgtasks.task_errors)"
    )
    before = tuple(await conn.fetchrow(counts))
    assert await sqlstate_of(conn, sql) == "PT202"
    assert tuple(await conn.fetchrow(counts)) == before


async def test_pruning_and_deleting_a_task_still_remove_its_history(conn):
    tid = await running_task(conn)
    await conn.execute(f"SELECT pgtasks.fail_task($1, {TOKEN}, 'boom', retryable => false)", tid)
    gone = await running_task(conn)
    await conn.execute(f"SELECT pgtasks.fail_task($1, {TOKEN}, 'boom', retryable => false)", gone)
    # By hand: the errors go with the task (cascade); events have no key and stay.
    await conn.execute("DELETE FROM pgtasks.tasks WHERE id = $1", gone)
    assert (
        await conn.fetchval("SELECT count(*) FROM pgtasks.task_errors WHERE task_id = $1", gone)
        == 0
    )
    await conn.execute(
        "UPDATE pgtasks.tasks SET finished_at = now() - interval '30 days' WHERE id = $1", tid
    )
    assert await conn.fetchval("SELECT pgtasks.prune_finished(interval '7 days')") == 1
    for table in ("task_events", "task_errors"):
        n = await conn.fetchval(f"SELECT count(*) FROM pgtasks.{table} WHERE task_id = $1", tid)
        assert n == 0, table
    # The pruning setting lasted for the call only.
    assert await sqlstate_of(conn, "DELETE FROM pgtasks.task_events") == "PT202"


# -- cancel payload ------------------------------------------------------------------------


async def test_cancel_notification_carries_only_the_task_id(dsn, conn):
    """A hint for the task's worker, which confirms it with a heartbeat of its lease tokens:
    nothing in it (not even the attempt) decides anything."""
    listener = await db.connect(dsn)
    got: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("pgtasks_cancel", lambda *a: got.put_nowait(a[3]))
    try:
        tid = await running_task(conn)
        await conn.execute(f"SELECT pgtasks.yield_task($1, {TOKEN})", tid)
        await conn.fetch("SELECT * FROM pgtasks.claim_tasks('w', max_tasks => 1)")
        await conn.execute("SELECT pgtasks.cancel_task($1)", tid)
        assert await asyncio.wait_for(got.get(), 60) == str(tid)
    finally:
        await listener.close()


# -- size limits ---------------------------------------------------------------------------


@pytest.fixture
async def small_limits(conn):
    await conn.execute("SELECT pgtasks.configure(max_result_bytes => 100, max_log_bytes => 50)")


async def counts(conn: asyncpg.Connection) -> tuple[int, ...]:
    return tuple(
        await conn.fetchrow(
            "SELECT (SELECT count(*) FROM pgtasks.task_logs),"
            " (SELECT count(*) FROM pgtasks.task_steps),"
            " (SELECT count(*) FROM pgtasks.task_errors),"
            " (SELECT count(*) FROM pgtasks.task_events)"
        )
    )


@pytest.mark.parametrize(
    ("sql", "state"),
    [
        (
            f"SELECT pgtasks.finish_task($1, {TOKEN}, jsonb_build_object('x', repeat('a', 200)))",
            "PT203",
        ),
        (f"SELECT pgtasks.checkpoint($1, {TOKEN}, 's', to_jsonb(repeat('a', 200)))", "PT203"),
        (f"SELECT pgtasks.log($1, {TOKEN}, 'info', repeat('é', 30))", "PT204"),
        (f"SELECT pgtasks.report_progress($1, {TOKEN}, 1, 2, repeat('a', 51))", "PT204"),
        (
            f"SELECT pgtasks.log_many($1, {TOKEN}, ARRAY['info', 'info'],"
            " ARRAY['short', repeat('a', 51)])",
            "PT204",
        ),
    ],
)
async def test_over_the_limit_is_a_pt_error_that_writes_nothing(conn, small_limits, sql, state):
    tid = await running_task(conn)
    before = await counts(conn)
    assert await sqlstate_of(conn, sql, tid) == state
    assert await counts(conn) == before
    assert await conn.fetchval("SELECT status::text FROM pgtasks.tasks WHERE id = $1", tid) == (
        "RUNNING"
    )


async def test_an_oversized_result_fails_its_task_not_the_batch(conn, small_limits):
    a, b = await conn.fetch("SELECT * FROM pgtasks.submit_tasks('t', ARRAY['{}', '{}']::jsonb[])")
    await conn.fetch("SELECT * FROM pgtasks.claim_tasks('w', max_tasks => 2)")
    rejected = await conn.fetch(
        "SELECT * FROM pgtasks.finish_and_claim('w', $1, $2, "
        "ARRAY[to_jsonb(repeat('a', 200)), '1'::jsonb])",
        [a[0], b[0]], [await token(conn, a[0]), await token(conn, b[0])],
    )  # fmt: skip
    assert [r["rejected_task_id"] for r in rejected] == [a[0]]
    rows = dict(await conn.fetch("SELECT id, status::text FROM pgtasks.tasks ORDER BY id"))
    assert rows == {a[0]: "FAILED", b[0]: "DONE"}
    error = await conn.fetchval("SELECT error FROM pgtasks.task_errors WHERE task_id = $1", a[0])
    assert "larger than max_result_bytes (100)" in error


async def test_both_transition_triggers_check_the_same_list(conn):
    """The AFTER trigger repeats the BEFORE trigger's list (test_state_machine.py checks that
    one against pgtasks.transitions for all 36 pairs); a change to one must reach the other."""
    defs = dict(
        await conn.fetch(
            "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger "
            "WHERE tgrelid = 'pgtasks.tasks'::regclass "
            "AND tgname IN ('tasks_check_transition', 'tasks_check_update')"
        )
    )
    before = defs["tasks_check_transition"]
    rule = before[before.index("WHEN ((") + len("WHEN (") : before.rindex(") EXECUTE")]
    assert rule in defs["tasks_check_update"]


async def test_a_huge_failure_is_kept_clipped_with_its_start_and_end(conn):
    """sql/0017: fail_task keeps error and traceback within settings.max_log_bytes (64 KiB by
    default): the start, a marker of what was left out, and the end (the innermost frames)."""
    tid = await running_task(conn)
    error = "E" + "x" * 200_000 + "END-OF-ERROR"
    tb = "Traceback (most recent call last):\n" + "  frame\n" * 50_000 + "ValueError: boom"
    status = await conn.fetchval(
        f"SELECT pgtasks.fail_task(task_id => $1, lease_token => {TOKEN}, error => $2,"
        " traceback => $3)",
        tid, error, tb,
    )  # fmt: skip
    assert status == "COMMIT"  # to be retried: the failure itself was recorded
    row = await conn.fetchrow(
        "SELECT t.error, e.traceback, e.error AS attempt_error FROM pgtasks.tasks t"
        " JOIN pgtasks.task_errors e ON e.task_id = t.id WHERE t.id = $1",
        tid,
    )
    for text, head, tail in (
        (row["error"], "Exx", "END-OF-ERROR"),
        (row["attempt_error"], "Exx", "END-OF-ERROR"),
        (row["traceback"], "Traceback (most recent call last):", "ValueError: boom"),
    ):
        assert 65_536 <= len(text) <= 65_536 + 100
        assert text.startswith(head) and text.endswith(tail)
        assert "characters left out" in text
    short = await running_task(conn)
    await conn.execute(f"SELECT pgtasks.fail_task($1, {TOKEN}, 'short', 'tb')", short)
    kept = await conn.fetchval("SELECT error FROM pgtasks.tasks WHERE id = $1", short)
    assert kept == "short"
