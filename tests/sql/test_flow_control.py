"""Flow control in SQL: unique submits, queue settings, per-key concurrency,
enforced by claim_tasks and finish_and_claim. The worker-level tests are in
tests/test_flow_control.py; these call the functions directly."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.conftest import wait_for
from tests.sql.helpers import expire_lease, raises
from tests.sql.test_plans import nested_plans
from tests.sql.test_roles import login  # noqa: F401  (fixture)

CLAIM = "SELECT id, queue FROM pgtasks.claim_tasks('w', $1::text[], $2)"


async def claim(conn: asyncpg.Connection, n: int, queues: list[str] | None = None) -> list[int]:
    return [r["id"] for r in await conn.fetch(CLAIM, queues, n)]


async def finish(conn: asyncpg.Connection, ids: list[int]) -> None:
    rows = await conn.fetch("SELECT id, lease_token FROM pgtasks.tasks WHERE id = ANY($1)", ids)
    await conn.fetch(
        "SELECT * FROM pgtasks.finish_tasks($1, $2, $3::jsonb[])",
        [r[0] for r in rows], [r[1] for r in rows], [None] * len(rows),
    )  # fmt: skip


async def submit_many(conn: asyncpg.Connection, n: int, queue: str, **extra: object) -> list[int]:
    args = "".join(f", {k} => {v!r}" for k, v in extra.items())
    return [
        await conn.fetchval(f"SELECT pgtasks.submit_task('t', queue => '{queue}'{args})")
        for _ in range(n)
    ]


# -- unique submits ------------------------------------------------------------------------


async def test_twenty_sessions_one_unique_key_one_task(dsn, conn):
    conns = [await asyncpg.connect(dsn) for _ in range(20)]
    try:
        # A lock held by the test makes all 20 wait at the same point, then race.
        await conn.execute("SELECT pg_advisory_lock(42)")
        sql = (
            "SELECT s.* FROM pg_advisory_xact_lock_shared(42),"
            " pgtasks.submit_or_get('t', unique_key => 'report:1') s"
        )
        pending = asyncio.gather(*(c.fetchrow(sql) for c in conns))
        # Released only once all 20 wait for it, so that they really race.
        waiting = [c.get_server_pid() for c in conns]
        await wait_for(
            conn,
            "SELECT count(*) = 20 FROM pg_locks"
            " WHERE locktype = 'advisory' AND NOT granted AND pid = ANY($1)",
            waiting,
        )
        await conn.execute("SELECT pg_advisory_unlock(42)")
        results = await pending
    finally:
        for c in conns:
            await c.close()
    assert len({r["id"] for r in results}) == 1
    assert sum(r["created"] for r in results) == 1
    assert (
        await conn.fetchval("SELECT count(*) FROM pgtasks.tasks WHERE unique_key = 'report:1'") == 1
    )


async def test_key_is_free_again_once_the_task_finished(conn):
    first = await conn.fetchval("SELECT pgtasks.submit_task('t', unique_key => 'k')")
    assert await conn.fetchval("SELECT pgtasks.submit_task('t', unique_key => 'k')") == first
    ids = await claim(conn, 1)
    assert ids == [first]
    # RUNNING is still active: same task.
    assert await conn.fetchval("SELECT pgtasks.submit_task('t', unique_key => 'k')") == first
    await finish(conn, ids)
    second = await conn.fetchrow("SELECT * FROM pgtasks.submit_or_get('t', unique_key => 'k')")
    assert second["created"] and second["id"] != first


async def test_unique_for_holds_the_key_whatever_the_state(conn):
    sql = (
        "SELECT * FROM pgtasks.submit_or_get('t', unique_key => 'daily',"
        " unique_for => $1::text::interval)"
    )
    first = await conn.fetchrow(sql, "1 hour")
    assert first["created"]
    await finish(conn, await claim(conn, 1))
    again = await conn.fetchrow(sql, "1 hour")
    assert (again["id"], again["created"]) == (first["id"], False)
    # The window ends: the key submits a new task.
    await conn.execute("UPDATE pgtasks.unique_windows SET reserved_until = now() - interval '1 s'")
    later = await conn.fetchrow(sql, "1 hour")
    assert later["created"] and later["id"] != first["id"]


async def test_retry_of_a_task_whose_key_is_taken_says_so_and_changes_nothing(conn):
    first = await conn.fetchval("SELECT pgtasks.submit_task('t', unique_key => 'k')")
    await conn.execute("SELECT pgtasks.cancel_task($1)", first)
    second = await conn.fetchval("SELECT pgtasks.submit_task('t', unique_key => 'k')")
    assert second != first
    await raises(conn, "SELECT pgtasks.retry_task($1)", "PT306", first)
    assert await conn.fetchval("SELECT status FROM pgtasks.tasks WHERE id = $1", first) == (
        "CANCELLED"
    )
    # Once the holder has finished, the retry goes through.
    await conn.execute("SELECT pgtasks.cancel_task($1)", second)
    await conn.execute("SELECT pgtasks.retry_task($1)", first)
    assert await conn.fetchval("SELECT status FROM pgtasks.tasks WHERE id = $1", first) == (
        "PENDING"
    )


async def test_pruning_drops_passed_windows_and_stale_starts(conn):
    await conn.execute(
        "SELECT pgtasks.submit_task('t', unique_key => k, unique_for => '1 hour')"
        " FROM unnest(ARRAY['a', 'b', 'c']) k"
    )
    await conn.execute(
        "UPDATE pgtasks.unique_windows SET reserved_until = now() - interval '1 s'"
        " WHERE unique_key <> 'c'"
    )
    await conn.execute("SELECT pgtasks.configure_queue('r', rate_limit => 4)")
    await conn.execute("SELECT pgtasks.configure_queue('gone', rate_limit => 4)")
    await submit_many(conn, 2, "r")
    await submit_many(conn, 2, "gone")
    assert len(await claim(conn, 4, ["r", "gone"])) == 4
    # 'gone' loses its rate limit: its starts count for nothing any more.
    await conn.execute("SELECT pgtasks.configure_queue('gone')")
    await conn.execute("SELECT pgtasks.prune_finished()")
    assert [r[0] for r in await conn.fetch("SELECT unique_key FROM pgtasks.unique_windows")] == [
        "c"
    ]
    rows = await conn.fetch("SELECT queue FROM pgtasks.queue_starts")
    assert [r[0] for r in rows] == ["r", "r"]
    # Starts older than the queue's window go too, by maintain() as well.
    await conn.execute("UPDATE pgtasks.queue_starts SET at = at - interval '2 seconds'")
    await conn.execute("SELECT pgtasks.maintain()")
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.queue_starts") == 0


async def test_submit_tasks_one_key_per_item(conn):
    ids = await conn.fetch(
        "SELECT * FROM pgtasks.submit_tasks('t', ARRAY['{}','{}','{}']::jsonb[],"
        " unique_keys => ARRAY['a', 'b', 'a'], concurrency_keys => ARRAY[NULL, 'c', 'c'])"
    )
    ids = [r[0] for r in ids]
    assert ids[0] == ids[2] and ids[0] != ids[1]
    rows = await conn.fetch(
        "SELECT unique_key, concurrency_key, concurrency_limit FROM pgtasks.tasks ORDER BY id"
    )
    assert [tuple(r) for r in rows] == [("a", None, None), ("b", "c", 1)]


# submit_tasks with unique keys: set-based from 10 items on (submit_keyed), one submit_one
# per item below. Both give the answers of one submit per item; the tests pad a batch with
# items without keys to take either path.
BATCH = (
    "SELECT * FROM pgtasks.submit_tasks('t',"
    " array_fill('{}'::jsonb, ARRAY[cardinality($1::text[])]),"
    " unique_keys => $1, unique_for => $2::text::interval, concurrency_keys => $3)"
)
PATHS = pytest.mark.parametrize("pad", [0, 12], ids=["one-by-one", "set-based"])


async def batch(c: asyncpg.Connection, keys: list[str | None], window: str | None = None,
                conc: list[str | None] | None = None, pad: int = 0) -> list[int]:  # fmt: skip
    keys = keys + [None] * pad
    conc = None if conc is None else conc + [None] * pad
    return [r[0] for r in await c.fetch(BATCH, keys, window, conc)][: len(keys) - pad]


@PATHS
async def test_a_keyed_batch_answers_as_one_submit_per_item(conn, login, pad):  # noqa: F811
    sub = login["submitter"]
    held = await sub.fetchval("SELECT pgtasks.submit_task('t', unique_key => 'held')")
    done = await sub.fetchval("SELECT pgtasks.submit_task('t', unique_key => 'done')")
    other_type = await sub.fetchval("SELECT pgtasks.submit_task('u', unique_key => 'a')")
    await conn.execute("SELECT pgtasks.cancel_task($1)", done)
    keys = [None, "a", "held", "a", None, "done", "b", "held"]
    conc = [None, "c", None, None, "c", None, None, None]
    ids = await batch(sub, keys, None, conc, pad)
    assert ids[1] == ids[3] and ids[2] == ids[7] == held
    assert len({ids[0], ids[1], ids[4], ids[5], ids[6], held, done, other_type}) == 8
    new = [ids[0], ids[1], ids[4], ids[5], ids[6]]
    assert new == sorted(new), "the new tasks are claimed in list order"
    rows = await conn.fetch(
        "SELECT id, unique_key, concurrency_key, concurrency_limit FROM pgtasks.tasks"
        " WHERE id = ANY($1) ORDER BY id",
        new,
    )
    assert [tuple(r)[1:] for r in rows] == [
        (None, None, None), ("a", "c", 1), (None, "c", 1), ("done", None, None), ("b", None, None),
    ]  # fmt: skip
    created = (
        "SELECT count(*) FROM pgtasks.task_events WHERE from_status IS NULL AND task_id = ANY($1)"
    )
    assert await conn.fetchval(created, new) == 5
    # The same batch again: every key is held now, the items without one are new tasks.
    again = await batch(sub, keys, None, conc, pad)
    assert [again[i] for i in (1, 2, 3, 5, 6, 7)] == [ids[i] for i in (1, 2, 3, 5, 6, 7)]
    assert again[0] not in ids and again[4] not in ids


@PATHS
async def test_a_keyed_batch_takes_and_honours_unique_for_windows(conn, login, pad):  # noqa: F811
    sub = login["submitter"]
    one = "SELECT pgtasks.submit_task('t', unique_key => $1, unique_for => '1 hour')"
    finished = await sub.fetchval(one, "finished")
    await conn.execute("SELECT pgtasks.cancel_task($1)", finished)  # its window still runs
    active = await sub.fetchval(one, "active")
    await conn.execute(
        "UPDATE pgtasks.unique_windows SET reserved_until = now() - interval '1 s'"
        " WHERE unique_key = 'active'"
    )  # its window ran out, the task did not
    ids = await batch(sub, ["new", "finished", None, "active", "new"], "1 hour", pad=pad)
    assert ids[1] == finished and ids[3] == active and ids[0] == ids[4]
    assert len({ids[0], ids[2], finished, active}) == 4
    windows = dict(
        await conn.fetch(
            "SELECT unique_key, task_id FROM pgtasks.unique_windows WHERE task_type = 't'"
        )
    )
    assert windows == {"new": ids[0], "finished": finished, "active": active}
    later = await conn.fetchval(
        "SELECT bool_and(reserved_until > now() + interval '59 minutes')"
        " FROM pgtasks.unique_windows WHERE unique_key IN ('new', 'active')"
    )
    assert later


async def test_a_keyed_batch_meets_a_holder_that_ends_before_the_look_up(conn, login):  # noqa: F811
    """The key's active task ends between the INSERT that met it and the look-up of its
    task (an AFTER INSERT trigger of the test's own ends it, once): the item's task is
    inserted in a second round. (One by one, the first item's INSERT already ends it.)"""
    sub = login["submitter"]
    holder = await sub.fetchval("SELECT pgtasks.submit_task('t', unique_key => 'k')")
    await conn.execute(
        f"""
        CREATE TABLE public.end_once (done boolean NOT NULL DEFAULT false);
        INSERT INTO public.end_once DEFAULT VALUES;
        CREATE FUNCTION public.end_holder() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
        BEGIN
            IF NOT (SELECT done FROM public.end_once) THEN
                UPDATE public.end_once SET done = true;
                PERFORM pgtasks.cancel_task({holder});
            END IF;
            RETURN NULL;
        END $$;
        CREATE TRIGGER zz_end_holder AFTER INSERT ON pgtasks.tasks
            FOR EACH STATEMENT EXECUTE FUNCTION public.end_holder();
        """
    )
    ids = await batch(sub, [None, "k", "k"], pad=12)
    assert ids[1] == ids[2] != holder
    status = await conn.fetchval("SELECT status FROM pgtasks.tasks WHERE id = $1", ids[1])
    assert status == "PENDING"
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.tasks WHERE unique_key = 'k'") == 2


async def test_twenty_sessions_one_batch_of_keys_one_task_per_key(dsn, conn):
    conns = [await asyncpg.connect(dsn) for _ in range(20)]
    keys = [f"k{i}" for i in range(50)]
    try:
        await conn.execute("SELECT pg_advisory_lock(43)")

        async def submit(c: asyncpg.Connection) -> list[int]:
            async with c.transaction():
                await c.execute("SELECT pg_advisory_xact_lock_shared(43)")
                return await batch(c, keys)

        pending = asyncio.gather(*(submit(c) for c in conns))
        waiting = [c.get_server_pid() for c in conns]
        await wait_for(
            conn,
            "SELECT count(*) = 20 FROM pg_locks"
            " WHERE locktype = 'advisory' AND NOT granted AND pid = ANY($1)",
            waiting,
        )
        await conn.execute("SELECT pg_advisory_unlock(43)")
        results = await pending
    finally:
        for c in conns:
            await c.close()
    assert all(r == results[0] for r in results) and len(set(results[0])) == 50
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.tasks") == 50


@pytest.mark.parametrize(
    "case",
    [
        ({1: "a", 7777: " "}, None, {}, None, "PT303", 7777),
        ({1: "a", 7777: "\u3000\u200b"}, None, {}, None, "PT303", 7777),
        ({1: "a", 7777: "k" * 256}, None, {}, None, "PT303", 7777),
        ({1: "日本", 2: "ключ", 7777: " "}, None, {}, None, "PT303", 7777),
        ({5: "a", 7777: " "}, "-1 hour", {}, None, "PT303", 5),
        ({9000: "a"}, None, {3: "c"}, 0, "PT304", 3),
        ({9000: "a"}, None, {1: "c", 2: "\t"}, None, "PT304", 2),
        ({2: "a"}, None, {1: "c", 7: "c" * 256}, None, "PT304", 7),
        ({2: " "}, None, {1: "c", 7: "c" * 256}, None, "PT303", 2),
    ],
)
async def test_a_bad_key_refuses_the_whole_batch_naming_its_item(conn, login, case):  # noqa: F811
    """(unique keys by item, unique_for, concurrency keys by item, concurrency_limit, the
    SQLSTATE and the item it names, counted from 1); nothing is written."""
    keys, window, conc, limit, sqlstate, item = case
    n = 10_000

    def spread(found: dict[int, str]) -> list[str | None] | None:
        if not found:
            return None
        out: list[str | None] = [None] * n
        for i, k in found.items():
            out[i - 1] = k
        return out

    with pytest.raises(asyncpg.PostgresError) as info:
        await login["submitter"].fetch(
            "SELECT * FROM pgtasks.submit_tasks('t', array_fill('{}'::jsonb, ARRAY[$1::int]),"
            " unique_keys => $2, unique_for => $3::text::interval, concurrency_keys => $4,"
            " concurrency_limit => $5)",
            n, spread(keys), window, spread(conc), limit,
        )  # fmt: skip
    assert info.value.sqlstate == sqlstate
    assert f"(item {item} of the list)" in info.value.message
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.tasks") == 0
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.unique_windows") == 0


@PATHS
async def test_keys_of_any_script_pass(login, pad):  # noqa: F811
    keys, conc = ["日本", "ключ", "日本"], ["顧客", None, None]
    ids = await batch(login["submitter"], keys, "1 hour", conc, pad)
    assert ids[0] == ids[2] != ids[1]


async def test_keyed_batches_keep_hash_joins_when_the_plan_is_cached(conn):
    """A cached generic plan cannot see the arrays and assumes 10 items per list; joining
    2,000 keys in a nested loop over them took seconds. submit_keyed plans each call: after
    more calls than the plan cache needs to switch to a generic plan, no list is scanned
    once per row of another. (auto_explain needs the superuser's session.)"""
    sub = conn
    for i in range(7):
        await batch(sub, [f"r{i}-{k // 2}" for k in range(4000)], "1 hour")
    notices: list[str] = []
    sub.add_log_listener(lambda _c, msg: notices.append(str(msg.message)))
    await sub.execute(
        "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0;"
        " SET auto_explain.log_nested_statements = on; SET auto_explain.log_analyze = on;"
        " SET auto_explain.log_level = notice; SET client_min_messages = notice"
    )
    await batch(sub, [f"last-{k // 2}" for k in range(4000)], "1 hour")
    plans = "\n".join(notices)
    assert "submit_keyed" in plans or "unique_windows" in plans, plans[:2000]
    rescanned = [
        line for line in plans.splitlines()
        if ("Function Scan" in line or "CTE Scan" in line) and "loops=1)" not in line
    ]  # fmt: skip
    assert not rescanned, "\n".join(rescanned)


@pytest.mark.parametrize(
    ("call", "sqlstate"),
    [
        ("pgtasks.configure_queue('q', max_running => 0)", "PT301"),
        ("pgtasks.configure_queue('q', max_running => -1)", "PT301"),
        ("pgtasks.configure_queue('q', rate_limit => -5)", "PT302"),
        ("pgtasks.configure_queue('q', rate_limit => 5, rate_period => '-1 second')", "PT302"),
        ("pgtasks.configure_queue('q', rate_limit => 5, rate_period => NULL)", "PT302"),
        ("pgtasks.configure_queue('q', rate_limit => 5, rate_period => '2 days')", "PT302"),
        ("pgtasks.configure_queue(' ', max_running => 1)", "PT103"),
        ("pgtasks.pause_queue(NULL)", "PT103"),
        ("pgtasks.resume_queue('')", "PT103"),
        ("pgtasks.submit_task('t', unique_key => ' ')", "PT303"),
        ("pgtasks.submit_task('t', unique_key => repeat('k', 256))", "PT303"),
        ("pgtasks.submit_task('t', unique_for => '1 hour')", "PT303"),
        ("pgtasks.submit_task('t', unique_key => 'k', unique_for => '-1 hour')", "PT303"),
        ("pgtasks.submit_task('t', concurrency_key => '')", "PT304"),
        ("pgtasks.submit_task('t', concurrency_limit => 2)", "PT304"),
        ("pgtasks.submit_task('t', concurrency_key => 'c', concurrency_limit => 0)", "PT304"),
        (
            "pgtasks.submit_tasks('t', ARRAY['{}']::jsonb[], unique_keys => ARRAY['a', 'b'])",
            "PT305",
        ),
        ("pgtasks.submit_tasks('t', ARRAY['{}']::jsonb[], concurrency_keys => '{}')", "PT305"),
        ("pgtasks.submit_tasks('t', ARRAY['{}']::jsonb[], unique_keys => ARRAY[' '])", "PT303"),
    ],
)
async def test_bad_settings_have_their_own_sqlstate(conn, call, sqlstate):
    await raises(conn, f"SELECT {call}", sqlstate)
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.tasks") == 0
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.queue_settings") == 0


# -- queue limits in the claim path --------------------------------------------------------


async def test_max_running_caps_claims_and_others_still_claim(conn):
    await conn.execute("SELECT pgtasks.configure_queue('lim', max_running => 3)")
    limited = await submit_many(conn, 6, "lim")
    free = await submit_many(conn, 2, "free")
    got = await claim(conn, 10)
    assert sorted(got) == sorted(limited[:3] + free)  # no starvation of 'free'
    assert await claim(conn, 10) == []
    await finish(conn, got[:1] if got[0] in limited else [limited[0]])
    assert await claim(conn, 10) == [limited[3]]
    # Held back means untouched: no retry used, no error, run_at not pushed.
    row = await conn.fetchrow(
        "SELECT retry_count, attempt, error, run_at <= now() AS ready"
        " FROM pgtasks.tasks WHERE id = $1",
        limited[5],
    )
    assert tuple(row) == (0, 0, None, True)


async def test_slot_comes_back_when_the_lease_is_rescued(conn):
    await conn.execute("SELECT pgtasks.configure_queue('lim', max_running => 1)")
    a, _ = await submit_many(conn, 2, "lim")
    assert await claim(conn, 5) == [a]
    assert await claim(conn, 5) == []
    await expire_lease(conn, a)
    assert await conn.fetchval("SELECT pgtasks.rescue_expired()") == 1
    assert await claim(conn, 5) != []


async def test_paused_queue_is_not_claimed_until_resumed(conn):
    await conn.execute("SELECT pgtasks.pause_queue('p')")
    paused = await submit_many(conn, 2, "p")  # submitting still works
    other = await submit_many(conn, 1, "o")
    assert await claim(conn, 10) == other
    assert await claim(conn, 10, ["p"]) == []
    row = await conn.fetchrow("SELECT * FROM pgtasks.queues WHERE queue = 'p'")
    assert row["paused"] and row["ready"] == 2
    await conn.execute("SELECT pgtasks.resume_queue('p')")
    assert sorted(await claim(conn, 10, ["p"])) == paused
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.queue_settings") == 0


async def test_rate_limit_counts_starts_in_the_window(conn):
    await conn.execute(
        "SELECT pgtasks.configure_queue('r', rate_limit => 4, rate_period => '1 hour')"
    )
    await submit_many(conn, 10, "r")
    first = await claim(conn, 10)
    assert len(first) == 4
    await finish(conn, first)  # finishing does not give rate budget back
    assert await claim(conn, 10) == []
    row = await conn.fetchrow("SELECT * FROM pgtasks.queues WHERE queue = 'r'")
    assert (row["rate_limit"], row["recent_starts"], row["ready"]) == (4, 4, 6)
    await conn.execute("UPDATE pgtasks.queue_starts SET at = at - interval '2 hours'")
    assert len(await claim(conn, 10)) == 4


async def test_configure_queue_replaces_limits_and_keeps_the_pause(conn):
    await conn.execute("SELECT pgtasks.pause_queue('q')")
    await conn.execute("SELECT pgtasks.configure_queue('q', max_running => 2)")
    await conn.execute("SELECT pgtasks.configure_queue('q', rate_limit => 5)")
    row = await conn.fetchrow("SELECT * FROM pgtasks.queues WHERE queue = 'q'")
    assert (row["paused"], row["max_running"], row["rate_limit"]) == (True, None, 5)


# -- per-key concurrency -------------------------------------------------------------------


async def test_concurrency_key_limits_running_per_key(conn):
    a = await submit_many(conn, 3, "q", concurrency_key="customer:1")
    b = await submit_many(conn, 3, "q", concurrency_key="customer:2", concurrency_limit=2)
    plain = await submit_many(conn, 1, "q")
    got = await claim(conn, 10)
    assert sorted(got) == sorted([a[0], b[0], b[1], *plain])
    assert await claim(conn, 10) == []
    await finish(conn, [a[0]])
    assert await claim(conn, 10) == [a[1]]


async def test_finish_and_claim_enforces_the_limits_too(conn):
    await conn.execute("SELECT pgtasks.configure_queue('lim', max_running => 2)")
    ids = await submit_many(conn, 5, "lim")
    got = await claim(conn, 2)
    rows = await conn.fetch(
        "SELECT * FROM pgtasks.finish_and_claim('w', $1::bigint[], ARRAY[(SELECT lease_token"
        " FROM pgtasks.tasks WHERE id = ($1::bigint[])[1])], ARRAY[NULL]::jsonb[], 10)",
        got[:1],
    )
    assert [r["id"] for r in rows] == [ids[2]]


async def test_concurrent_claimers_never_exceed_max_running(dsn, conn):
    await conn.execute("SELECT pgtasks.configure_queue('lim', max_running => 3)")
    await submit_many(conn, 30, "lim")
    conns = [await asyncpg.connect(dsn) for _ in range(8)]
    try:
        got = await asyncio.gather(*(claim(c, 2) for c in conns))
    finally:
        for c in conns:
            await c.close()
    assert sum(len(g) for g in got) == 3


# -- plans ---------------------------------------------------------------------------------


@pytest.mark.parametrize("keyed", [False, True])
async def test_limited_pick_walks_the_claim_index(conn, keyed):
    """Both limited picks (set-based, and the walk used when keyed tasks are ready) walk
    the claim index in order, like the fast path; running counts use their index."""
    await conn.execute(
        """
        INSERT INTO pgtasks.tasks (task_type, queue)
        SELECT 't', 'q' || (i % 2) FROM generate_series(1, 5000) i;
        ANALYZE pgtasks.tasks;
        """
    )
    if keyed:
        await conn.execute("SELECT pgtasks.submit_task('t', concurrency_key => 'k')")
    await conn.execute("SELECT pgtasks.configure_queue('q0', max_running => 100)")
    plans = await nested_plans(conn, "SELECT * FROM pgtasks.claim_tasks('w', NULL, 10)")
    marker = "t.concurrency_key <> ALL" if keyed else "LIMIT n"
    pick = next(p for p in plans.split("duration:") if marker in p and "SKIP LOCKED" in p)
    assert "Index Scan using tasks_claimable" in pick, pick
    assert "Sort Key" not in pick and "Seq Scan on tasks" not in pick, pick
    running = next(
        p for p in plans.split("duration:") if "count(*)" in p and "lease_expires_at" in p
    )
    assert "tasks_lease" in running, running


# -- roles ---------------------------------------------------------------------------------


async def test_roles_submit_configure_and_read(login):  # noqa: F811
    sub, admin, reader = login["submitter"], login["admin"], login["reader"]
    row = await sub.fetchrow("SELECT * FROM pgtasks.submit_or_get('t', unique_key => 'r')")
    assert row["created"]
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await sub.execute("SELECT pgtasks.pause_queue('default')")
    await admin.execute("SELECT pgtasks.configure_queue('default', max_running => 2)")
    await admin.execute("SELECT pgtasks.pause_queue('default')")
    rows = await reader.fetch("SELECT * FROM pgtasks.queues")
    assert [(r["queue"], r["paused"], r["max_running"], r["ready"]) for r in rows] == [
        ("default", True, 2, 1)
    ]
