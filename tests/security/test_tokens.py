"""Lease tokens and notifications, attacked from the roles that could forge them.

A claim hands its claimer a secret lease token; every call about the running attempt must
present it. The attempt number is public (task_overview shows it to every submitter), so a
second worker, a role with no grant at all, or a session holding a row lock must not be able
to finish, fail, log into, read the parents of, stop or stall a task another worker holds.
Notifications are hints that name nothing: any role may LISTEN and NOTIFY.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from pgtasks import Registry, Worker, db, task_register
from pgtasks.worker.base import WorkerStats
from pgtasks.worker.completer import Completer
from pgtasks.worker.lease_keeper import LeaseKeeper
from pgtasks.worker.producer import Producer
from pgtasks.worker.runner import Succeeded
from pgtasks.worker.slots import Slots
from tests.security.conftest import ROLES, Login, wait_until

CLAIM = "SELECT * FROM pgtasks.claim_tasks($1, max_tasks => 1, lease => interval '60 seconds')"

# Every single-task fenced call, with the task id as $1 and the token as $2.
FENCED = (
    "SELECT pgtasks.finish_task($1, $2, '{\"forged\": true}')",
    "SELECT pgtasks.fail_task($1, $2, 'forged', retryable => false)",
    "SELECT pgtasks.yield_task($1, $2)",
    "SELECT pgtasks.checkpoint($1, $2, 'forged', '1')",
    "SELECT * FROM pgtasks.task_steps_of($1, $2)",
    "SELECT pgtasks.report_progress($1, $2, 1, 2, 'forged')",
    "SELECT pgtasks.log($1, $2, 'INFO', 'forged')",
    "SELECT pgtasks.log_many($1, $2, ARRAY['INFO'], ARRAY['forged'])",
    "SELECT pgtasks.parent_results($1, $2)",
    "SELECT * FROM pgtasks.wait_for_event($1, $2, 'approved', interval '1 hour')",
    "SELECT pgtasks.snooze_task($1, $2, interval '1 second')",
    "SELECT pgtasks.spawn_children($1, $2, 'forged', '[{\"type\": \"forged\"}]')",
    "SELECT * FROM pgtasks.wait_for_children($1, $2)",
)
# The batched ones, which report a refused task instead of raising.
BATCHED = (
    "SELECT * FROM pgtasks.finish_tasks(ARRAY[$1::bigint], ARRAY[$2], ARRAY['{\"f\": 1}'::jsonb])",
    "SELECT * FROM pgtasks.finish_and_claim('attacker', ARRAY[$1::bigint], ARRAY[$2],"
    " ARRAY['{\"f\": 1}'::jsonb], 0)",
    "SELECT * FROM pgtasks.heartbeat('attacker', ARRAY[$1::bigint], ARRAY[$2])",
    "SELECT * FROM pgtasks.heartbeat('victim', ARRAY[$1::bigint], ARRAY[$2])",
)
ROW = """
SELECT status::text, worker_id, lease_expires_at, result, progress_current, progress_message,
       (SELECT count(*) FROM pgtasks.task_logs l WHERE l.task_id = t.id) AS logs,
       (SELECT count(*) FROM pgtasks.task_steps s WHERE s.task_id = t.id) AS steps,
       (SELECT count(*) FROM pgtasks.task_errors e WHERE e.task_id = t.id) AS errors
  FROM pgtasks.tasks t WHERE t.id = $1
"""


async def sqlstate(c: asyncpg.Connection, sql: str, *args: object) -> str | None:
    """The SQLSTATE the call fails with, None when it succeeds."""
    try:
        await asyncio.wait_for(c.fetch(sql, *args), 30)  # bounds a hung test only
    except asyncpg.PostgresError as exc:
        return str(exc.sqlstate)
    return None


async def role_dsn(login: Login, sec_dsn: str, role: str) -> tuple[asyncpg.Connection, str]:
    """A fresh login role of `role`: a connection as it, and its DSN for a worker process."""
    c = await login(role)
    name = await c.fetchval("SELECT current_user")
    return c, sec_dsn.replace("postgres@", f"{name}@", 1)


# -- the fence -----------------------------------------------------------------------------


async def test_a_second_worker_cannot_write_a_task_another_worker_holds(login, su):
    victim = await login("pgtasks_worker")
    attacker = await login("pgtasks_worker")
    tid = await su.fetchval("SELECT pgtasks.submit_task('t', '{\"secret\": 1}')")
    (held,) = await victim.fetch(CLAIM, "victim")
    assert held["id"] == tid and len(held["lease_token"]) == 64
    other = await su.fetchval("SELECT pgtasks.submit_task('t')")
    (mine,) = await attacker.fetch(CLAIM, "attacker")  # a real token, of another task
    assert mine["id"] == other
    public = await attacker.fetchval("SELECT attempt FROM pgtasks.task_overview WHERE id = $1", tid)
    assert public == held["attempt"] == 1  # what the attempt-number fence trusted
    before = await su.fetchrow(ROW, tid)

    guesses = [str(public), "", "0" * 64, mine["lease_token"], held["lease_token"].upper()]
    for guess in guesses:
        for sql in FENCED:
            assert await sqlstate(attacker, sql, tid, guess) == "PT002", (sql, guess)
        for sql in BATCHED:
            rows = await attacker.fetch(sql, tid, guess)
            assert [r[0] for r in rows] == [tid], (sql, guess)  # refused, reported back
    for sql in FENCED:
        assert await sqlstate(attacker, sql, tid, None) == "PT117", sql
    # The attempt-only signatures are gone: no call takes a number for the fence.
    assert (
        await sqlstate(
            attacker, "SELECT pgtasks.finish_task($1::bigint, 1, '{\"forged\": true}'::jsonb)", tid
        )
        == "42883"
    )
    assert (
        await su.fetch(
            "SELECT p.oid::regprocedure::text FROM pg_proc p"
            " WHERE p.pronamespace = 'pgtasks'::regnamespace"
            "   AND pg_get_function_arguments(p.oid) ~ '\\mattempts?\\M'"
        )
        == []
    )

    assert await su.fetchrow(ROW, tid) == before  # nothing changed, not even the lease
    await victim.execute(
        'SELECT pgtasks.finish_task($1, $2, \'{"by": "victim"}\')', tid, held["lease_token"]
    )
    done = await su.fetchrow(ROW, tid)
    assert (done["status"], done["result"]) == ("DONE", {"by": "victim"})


async def test_no_view_and_no_role_but_the_owner_sees_a_lease_token(login, su):
    w = await login("pgtasks_worker")
    tid = await su.fetchval("SELECT pgtasks.submit_task('t')")
    (held,) = await w.fetch(CLAIM, "w")
    token = held["lease_token"]
    await su.execute("ANALYZE pgtasks.tasks")  # column statistics hold sampled values
    for role in (*ROLES, None):
        c = await login(role)
        readable = await c.fetch(
            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'pgtasks'::regnamespace"
            " AND c.relkind IN ('r', 'v', 'm') AND has_table_privilege(c.oid, 'SELECT')"
        )
        for (rel,) in readable:
            n = await c.fetchval(
                f"SELECT count(*) FROM pgtasks.{rel} v WHERE v::text LIKE '%' || $1 || '%'", token
            )
            assert n == 0, (role, rel)
            columns = (await c.prepare(f"SELECT * FROM pgtasks.{rel}")).get_attributes()
            assert "lease_token" not in {a.name for a in columns}, (role, rel)
        assert await sqlstate(c, "SELECT lease_token FROM pgtasks.tasks") == "42501", role
        stats = await c.fetchval(
            "SELECT count(*) FROM pg_stats WHERE schemaname = 'pgtasks' AND attname = 'lease_token'"
        )
        assert stats == 0, role
    # Nor does an error message: the refusal names the attempt, never a token.
    with pytest.raises(asyncpg.PostgresError) as info:
        await w.execute("SELECT pgtasks.finish_task($1, $2)", tid, token[:-1] + "x")
    assert token not in str(info.value) and token[:-1] not in str(info.value)
    assert await su.fetchval("SELECT lease_token FROM pgtasks.tasks WHERE id = $1", tid) == token


async def test_every_claim_draws_a_new_token_and_an_ended_attempts_token_never_passes(login, su):
    w = await login("pgtasks_worker")
    tid = await su.fetchval("SELECT pgtasks.submit_task('t', max_retries => 10)")
    # A claim lost before it became durable (here: rolled back) and claimed again: the same
    # attempt number, which is why the number cannot fence, and a new token.
    tr = w.transaction()
    await tr.start()
    (lost,) = await w.fetch(CLAIM, "w")
    await tr.rollback()
    (again,) = await w.fetch(CLAIM, "w")
    assert lost["attempt"] == again["attempt"] == 1
    assert lost["lease_token"] != again["lease_token"]
    for sql in FENCED:
        assert await sqlstate(w, sql, tid, lost["lease_token"]) == "PT002", sql
    seen = {lost["lease_token"], again["lease_token"]}
    token = again["lease_token"]

    # Each way an attempt ends clears its token; the next claim draws one never seen.
    ends = [
        ("SELECT pgtasks.yield_task($1, $2)", "COMMIT"),
        ("SELECT pgtasks.fail_task($1, $2, 'boom', retry_delay => interval '0')", "COMMIT"),
        ("rescue", "COMMIT"),
        ("SELECT pgtasks.cancel_task($1)", "CANCELLED"),
        ("SELECT pgtasks.finish_task($1, $2, '1')", "DONE"),
    ]
    admin = await login("pgtasks_admin")
    state = "SELECT status::text, lease_token FROM pgtasks.tasks WHERE id = $1"
    for end, status in ends:
        if end == "rescue":
            await su.fetchval("SELECT pgtasks.advance_clock(interval '61 seconds')")
            assert await w.fetchval("SELECT pgtasks.rescue_expired()") == 1
        elif "cancel_task" in end:
            await admin.execute(end, tid)
        else:
            await w.execute(end, tid, token)
        row = await su.fetchrow(state, tid)
        assert (row["status"], row["lease_token"]) == (status, None), end
        assert await sqlstate(w, FENCED[0], tid, token) == "PT002", end
        if status == "DONE":
            break
        if status == "CANCELLED":
            await admin.execute("SELECT pgtasks.retry_task($1)", tid)
        await su.execute("UPDATE pgtasks.tasks SET run_at = now() WHERE id = $1", tid)
        (claim,) = await w.fetch(CLAIM, "w")
        assert claim["id"] == tid and claim["lease_token"] not in seen, end
        seen.add(claim["lease_token"])
        token = claim["lease_token"]


async def test_parent_results_are_for_the_holder_of_the_childs_lease(login, su):
    sub = await login("pgtasks_submitter")
    w, attacker = await login("pgtasks_worker"), await login("pgtasks_worker")
    reader = await login("pgtasks_reader")
    # depends_on is for roles that may read results (PT511); the owner submits here.
    parent = await su.fetchval("SELECT pgtasks.submit_task('t', '{}', queue => 'p')")
    child = await su.fetchval(
        "SELECT pgtasks.submit_task('t', queue => 'c', depends_on => ARRAY[$1]::bigint[])", parent
    )
    other = await su.fetchval(
        "SELECT pgtasks.submit_task('t', queue => 'c', depends_on => ARRAY[$1]::bigint[])", parent
    )
    (p,) = await w.fetch(CLAIM, "w")
    await w.execute(
        "SELECT pgtasks.finish_task($1, $2, '{\"secret\": 42}')", parent, p["lease_token"]
    )
    (c,) = await w.fetch(CLAIM, "w")
    assert c["id"] == child
    (o,) = await attacker.fetch(CLAIM, "attacker")
    assert o["id"] == other
    read = "SELECT pgtasks.parent_results($1, $2)::text"
    for role_conn in (reader, sub):
        assert await sqlstate(role_conn, read, child, c["lease_token"]) == "42501"
    for guess in (str(c["attempt"]), o["lease_token"], "0" * 64):
        assert await sqlstate(attacker, read, child, guess) == "PT002", guess
    # The holder reads its own task's parents, not another task's with its token.
    assert await sqlstate(w, read, other, c["lease_token"]) == "PT002"
    got = json.loads(await w.fetchval(read, child, c["lease_token"]))
    assert got == {str(parent): {"node": None, "status": "DONE", "result": {"secret": 42}}}


# -- locks -------------------------------------------------------------------------------


async def test_a_wrong_token_locks_nothing_even_in_a_transaction_left_open(login, su):
    """The token is compared in the locking statement: a refused caller never holds the
    row, so leaving its transaction open after the PT002 stalls nobody."""
    victim, attacker = await login("pgtasks_worker"), await login("pgtasks_worker")
    tid = await su.fetchval("SELECT pgtasks.submit_task('t')")
    (held,) = await victim.fetch(CLAIM, "victim")
    for sql in (*FENCED, *BATCHED):
        tr = attacker.transaction()
        await tr.start()
        try:
            state = await sqlstate(attacker, sql, tid, "forged")
            assert state in ("PT002", None), (sql, state)
            # The attacker's transaction is still open (aborted or not); the holder goes on.
            lost = await asyncio.wait_for(
                victim.fetch(
                    "SELECT * FROM pgtasks.heartbeat('victim', ARRAY[$1::bigint], ARRAY[$2])",
                    tid, held["lease_token"],
                ),
                30,
            )  # fmt: skip
            assert lost == [], sql
            await asyncio.wait_for(
                victim.execute(
                    "SELECT pgtasks.report_progress($1, $2, 1, 2)", tid, held["lease_token"]
                ),
                30,
            )
        finally:
            await tr.rollback()
    await victim.execute("SELECT pgtasks.finish_task($1, $2, '1')", tid, held["lease_token"])


async def test_a_locked_row_bounds_the_wait_of_every_fenced_call(login, su, sec_dsn):
    w = await login("pgtasks_worker")
    a = await su.fetchval("SELECT pgtasks.submit_task('t')")
    b = await su.fetchval("SELECT pgtasks.submit_task('t')")
    (ra,) = await w.fetch(CLAIM, "w")
    (rb,) = await w.fetch(CLAIM, "w")
    ta, tb = ra["lease_token"], rb["lease_token"]
    lease = "SELECT lease_expires_at FROM pgtasks.tasks WHERE id = $1"
    before_a, before_b = await su.fetchval(lease, a), await su.fetchval(lease, b)
    # Every function that takes a token sets its own bound.
    unbounded = await su.fetch(
        "SELECT p.oid::regprocedure::text FROM pg_proc p"
        " WHERE p.pronamespace = 'pgtasks'::regnamespace"
        "   AND pg_get_function_arguments(p.oid) ~ '\\mlease_tokens?\\M'"
        "   AND has_function_privilege('pgtasks_worker', p.oid, 'EXECUTE')"
        "   AND NOT coalesce('lock_timeout=1s' = ANY (p.proconfig), false)"
    )
    assert unbounded == []

    locker = await db.connect(sec_dsn)  # the owner, in a transaction left open
    tr = locker.transaction()
    await tr.start()
    await locker.execute("SELECT 1 FROM pgtasks.tasks WHERE id = $1 FOR UPDATE", a)
    try:
        # Each call waits for its own lock_timeout, so they wait side by side, one
        # connection each: 1 s in all instead of 1 s per call.
        calls = [*FENCED, *BATCHED[:2]]
        conns = [w, *[await login("pgtasks_worker") for _ in calls[1:]]]
        states = await asyncio.gather(
            *(sqlstate(c, sql, a, ta) for c, sql in zip(conns, calls, strict=True))
        )
        # lock_not_available, every one
        assert dict(zip(calls, states, strict=True)) == dict.fromkeys(calls, "55P03")
        # The heartbeat skips the locked row, neither extending nor losing it, and keeps
        # the worker's other leases.
        lost = await asyncio.wait_for(
            w.fetch("SELECT * FROM pgtasks.heartbeat('w', $1, $2)", [a, b], [ta, tb]), 30
        )
        assert lost == []
        assert await su.fetchval(lease, b) > before_b
        assert await su.fetchval(lease, a) == before_a
        assert await w.fetchval("SELECT pgtasks.rescue_expired()") == 0
    finally:
        await tr.rollback()
        await locker.close()
    await w.execute("SELECT pgtasks.finish_task($1, $2, '1')", a, ta)
    assert await su.fetchval("SELECT status::text FROM pgtasks.tasks WHERE id = $1", a) == "DONE"


async def test_the_python_worker_rides_out_a_locked_row(login, su, sec_dsn):
    """Its heartbeat comes back within the bound, its finish is tried again until the row is
    free, and the task is neither lost nor rescued."""
    _, dsn = await role_dsn(login, sec_dsn, "pgtasks_worker")
    tid = await su.fetchval("SELECT pgtasks.submit_task('t')")
    pool = await db.create_pool(dsn, min_size=1, max_size=2, application_name="sec-rider")
    locker = await db.connect(sec_dsn)
    try:
        (row,) = await pool.fetch(CLAIM, "rider")
        slots = Slots(10, 10)
        slots.finishing[tid] = row["lease_token"]
        lost: list[int] = []
        keeper = LeaseKeeper(
            pool, worker_id="rider", lease=60.0, interval=3600.0, owned=slots.owned,
            on_lost=lambda t, _why: lost.append(t),
        )  # fmt: skip
        stopping = asyncio.Event()
        completer = Completer(pool, slots=slots, stats=WorkerStats(), stopping=stopping)
        tr = locker.transaction()
        await tr.start()
        await locker.execute("SELECT 1 FROM pgtasks.tasks WHERE id = $1 FOR UPDATE", tid)
        try:
            assert await asyncio.wait_for(keeper.run_once(), 30) == []
            completer.start()
            await completer.record(tid, row["lease_token"], Succeeded('"ok"'))

            async def finish_waits_on_the_lock() -> bool:
                return bool(
                    await su.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name ="
                        " 'sec-rider' AND $1 = ANY (pg_blocking_pids(pid))",
                        locker.get_server_pid(),
                    )
                )

            await wait_until(finish_waits_on_the_lock)
            assert await su.fetchval("SELECT pgtasks.rescue_expired()") == 0
            assert lost == []
        finally:
            await tr.rollback()

        async def done() -> bool:
            return bool(
                await su.fetchval("SELECT status = 'DONE' FROM pgtasks.tasks WHERE id = $1", tid)
            )

        await wait_until(done)
        history = await su.fetch(
            "SELECT to_status::text FROM pgtasks.task_events WHERE task_id = $1 ORDER BY id", tid
        )
        assert [r[0] for r in history] == ["PENDING", "RUNNING", "DONE"]
        await completer.stop()
    finally:
        await locker.close()
        await pool.close()


# -- notifications ---------------------------------------------------------------------------

REG = Registry()
SEEN: dict[int, Any] = {}
OPEN: set[int] = set()


@task_register("sec.hold", into=REG)
async def hold(ctx: Any, params: dict[str, Any]) -> str:
    SEEN[ctx.task_id] = ctx
    while ctx.task_id not in OPEN:
        await asyncio.sleep(0.02)
    return "done"


@asynccontextmanager
async def running_worker(dsn: str, **kw: Any) -> AsyncIterator[Worker]:
    SEEN.clear()  # task ids start at 1 in every database this test runs on
    OPEN.clear()
    w = Worker(dsn, registry=REG, lease=60.0, poll_interval=0.2, shutdown_grace=1.0, **kw)
    t = asyncio.create_task(w.run())
    try:
        await asyncio.wait_for(w.ready.wait(), 30)
        yield w
    finally:
        OPEN.update(SEEN)
        w.stop()
        await asyncio.wait_for(t, 60)


async def test_a_cancel_notice_from_anyone_is_a_hint_the_worker_checks(login, su, sec_dsn):
    """Anyone may NOTIFY pgtasks_cancel: the worker asks the database (a heartbeat of its
    tokens) and stops only what it no longer holds."""
    _, dsn = await role_dsn(login, sec_dsn, "pgtasks_worker")
    nobody = await login(None)
    admin = await login("pgtasks_admin")
    async with running_worker(dsn, queues=["sec"]) as w:

        async def listening() -> bool:
            return bool(
                await su.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = left($1, 63)"
                    " AND (query LIKE 'LISTEN%pgtasks_cancel%' OR query = 'SELECT 1')",
                    w.application_name,
                )
            )

        await wait_until(listening)
        forged = await su.fetchval("SELECT pgtasks.submit_task('sec.hold', queue => 'sec')")
        real = await su.fetchval("SELECT pgtasks.submit_task('sec.hold', queue => 'sec')")
        await wait_until(lambda: _true(forged in SEEN and real in SEEN))
        lease = "SELECT lease_expires_at FROM pgtasks.tasks WHERE id = $1"
        before = await su.fetchval(lease, forged)
        attempt = await su.fetchval("SELECT attempt FROM pgtasks.tasks WHERE id = $1", forged)
        for payload in (str(forged), f"{forged}:{attempt}"):
            await nobody.execute("SELECT pg_notify('pgtasks_cancel', $1)", payload)

        async def confirmed() -> bool:  # the worker's heartbeat answered the notice
            return bool(await su.fetchval(f"SELECT ({lease}) > $2", forged, before))

        await wait_until(confirmed)
        assert not SEEN[forged].cancelled
        # The operator's cancel is real: the same check stops that task at once.
        assert await admin.fetchval("SELECT pgtasks.cancel_task($1)::text", real) == "RUNNING"
        await wait_until(lambda: _true(SEEN[real].cancelled))
        assert SEEN[real].cancel_reason == "cancelled"
        assert not SEEN[forged].cancelled
        OPEN.add(forged)

        async def finished() -> bool:
            return bool(
                await su.fetchval(
                    "SELECT status = 'DONE' AND retry_count = 0 FROM pgtasks.tasks WHERE id = $1",
                    forged,
                )
            )

        await wait_until(finished)


async def _true(value: bool) -> bool:
    return value


async def test_notifications_name_no_queue_and_carry_no_data(login, su):
    """A role with no pgtasks grant LISTENs to everything pgtasks sends while a tenant's
    queue goes through every kind of notification; it learns no name and no data."""
    nobody = await login(None)
    got: dict[str, list[str]] = {}
    channels = ("pgtasks_wakeup", "pgtasks_cancel", "pgtasks_done", "pgtasks_progress")
    for ch in channels:
        await nobody.add_listener(ch, lambda _c, _p, channel, payload: got.setdefault(
            channel, []).append(payload))  # fmt: skip
    sub, w, admin = [
        await login(r) for r in ("pgtasks_submitter", "pgtasks_worker", "pgtasks_admin")
    ]
    q = "tenant-acme-corp"
    parent = await sub.fetchval("SELECT pgtasks.submit_task('t', '{\"card\": 1}', queue => $1)", q)
    await admin.fetchval(  # depends_on: a role that may read results (PT511)
        "SELECT pgtasks.submit_task('t', queue => $1, depends_on => ARRAY[$2]::bigint[])", q, parent
    )
    await sub.fetchval("SELECT pgtasks.watch_task($1)", parent)
    await admin.execute("SELECT pgtasks.configure_queue($1, max_running => 5)", q)
    await admin.execute("SELECT pgtasks.pause_queue($1)", q)
    await admin.execute("SELECT pgtasks.resume_queue($1)", q)
    (p,) = await w.fetch(CLAIM, "w")
    await w.execute(
        "SELECT pgtasks.report_progress($1, $2, 1, 2, 'acme')", parent, p["lease_token"]
    )
    await w.execute("SELECT pgtasks.yield_task($1, $2)", parent, p["lease_token"])
    (p,) = await w.fetch(CLAIM, "w")
    await w.execute("SELECT pgtasks.finish_task($1, $2, '{\"acme\": 1}')", parent, p["lease_token"])
    (child,) = await w.fetch(CLAIM, "w")  # released by the parent's finish
    await admin.execute("SELECT pgtasks.cancel_task($1)", child["id"])
    for ch in channels:  # delivered in commit order: after these, everything before is in
        await su.execute("SELECT pg_notify($1, 'marker')", ch)

    async def all_in() -> bool:
        return all("marker" in got.get(ch, []) for ch in channels)

    await wait_until(all_in)
    tag = await w.fetchval("SELECT pgtasks.queue_tag($1)", q)
    payloads = {ch: [x for x in got[ch] if x != "marker"] for ch in channels}
    assert payloads["pgtasks_wakeup"] and set(payloads["pgtasks_wakeup"]) == {tag}
    assert re.fullmatch("[0-9a-f]{8}", tag)
    assert payloads["pgtasks_cancel"] == [str(child["id"])]
    assert payloads["pgtasks_done"] == [str(parent)]
    assert payloads["pgtasks_progress"] == [str(parent)]
    for ch, values in payloads.items():
        for value in values:
            assert "acme" not in value and "tenant" not in value and "card" not in value, ch
    # The tag cannot be turned back into the name without the key, which nobody but the
    # owner reads, nor computed for a guessed name.
    assert await sqlstate(nobody, "SELECT pgtasks.queue_tag($1)", q) == "42501"
    assert await sqlstate(nobody, "SELECT * FROM pgtasks.wakeup_key") == "42501"
    assert await sqlstate(w, "SELECT * FROM pgtasks.wakeup_key") == "42501"


async def test_a_worker_tells_its_wake_ups_by_their_tags(login, sec_dsn, su):
    _, dsn = await role_dsn(login, sec_dsn, "pgtasks_worker")
    pool = await db.create_pool(dsn, min_size=1, max_size=1)
    try:
        producer = Producer(
            pool, worker_id="p", slots=Slots(1, 1), async_types=["t"], sync_types=[],
            on_claimed=lambda rows: None, stats=WorkerStats(), stopping=asyncio.Event(),
            queues=["tenant-acme-corp"],
        )  # fmt: skip
        await producer.load_wakeup_tags()
        mine = await su.fetchval("SELECT pgtasks.queue_tag('tenant-acme-corp')")
        theirs = await su.fetchval("SELECT pgtasks.queue_tag('tenant-other')")
        assert producer.wants(mine) and producer.wants("")
        assert not producer.wants(theirs) and not producer.wants("tenant-acme-corp")
    finally:
        await pool.close()
