"""Locks and stalls: no role can hold a lock pgtasks relies on, and no submit holds one a
worker waits for; depends_on names only tasks the submitting role may read.

Each attack runs as the attacking role (`login`); the superuser plays the victim worker and
observes. A call that should not wait is watched through pg_blocking_pids, never a timer.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from pgtasks import db
from pgtasks.migrations import MIGRATION_LOCK, MigrationBlocked, available, migrate_url
from tests.security.conftest import wait_until

# maintain()'s advisory key before it locked a row of pgtasks.locks ("pgtmnt"), and the key
# a concurrency key's name used to hash to.
MAINTAIN_KEY = "SELECT pg_advisory_lock(x'7067746d6e74'::bigint)"
KEY_LOCK = "SELECT pg_advisory_lock(hashtextextended('pgtasks.concurrency_key:' || $1, 0))"


@pytest.fixture
async def observer(sec_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A second superuser session, to watch the victim's backend."""
    c = await db.connect(sec_dsn)
    try:
        yield c
    finally:
        await c.close()


async def without_waiting(
    observer: asyncpg.Connection, conn: asyncpg.Connection, sql: str, *args: Any
) -> list[asyncpg.Record]:
    """Run `sql` on `conn` and prove it never waited for a lock: it ends before any moment at
    which its backend is blocked by another."""
    pid = conn.get_server_pid()
    call = asyncio.ensure_future(conn.fetch(sql, *args))
    blocked = False

    async def settled() -> bool:
        nonlocal blocked
        if call.done():
            return True
        blocked = bool(await observer.fetchval("SELECT pg_blocking_pids($1) <> '{}'", pid))
        return blocked

    await wait_until(settled)
    if blocked:
        # Leave the connection usable for the fixtures: whoever blocks it is ended by the
        # caller's cleanup, then the call completes.
        call.cancel()
        raise AssertionError(f"waited for a lock: {sql}")
    return call.result()


async def role_of(conn: asyncpg.Connection) -> str:
    return str(await conn.fetchval("SELECT current_user"))


# The victim worker's calls, in one place.
async def claim(su: asyncpg.Connection, lease: str = "60 seconds") -> list[asyncpg.Record]:
    return await su.fetch(
        "SELECT id, lease_token FROM pgtasks.claim_tasks('w', max_tasks => 10,"
        " lease => $1::text::interval)",
        lease,
    )


HEARTBEAT = "SELECT * FROM pgtasks.heartbeat('w', ARRAY[$1::bigint], ARRAY[$2::text])"
FINISH = "SELECT pgtasks.finish_task($1, $2, '\"done\"'::jsonb)"


async def child_state(su: asyncpg.Connection, tid: int) -> tuple[Any, ...]:
    """Status, unmet parents, and how many times the task became PENDING (released once)."""
    row = await su.fetchrow(
        "SELECT t.status::text, t.waiting_on,"
        " (SELECT count(*) FROM pgtasks.task_events e"
        "   WHERE e.task_id = t.id AND e.to_status = 'PENDING')"
        " FROM pgtasks.tasks t WHERE t.id = $1",
        tid,
    )
    assert row is not None
    return tuple(row)


# -- no lock pgtasks relies on is an advisory lock -------------------------------------------


async def test_no_pgtasks_function_takes_an_advisory_lock(su):
    # Advisory locks are open to every role, so none may guard anything pgtasks relies on.
    users = await su.fetch(
        "SELECT p.proname FROM pg_proc p"
        " WHERE p.pronamespace = 'pgtasks'::regnamespace AND p.prosrc ~* 'advisory'"
    )
    assert [r["proname"] for r in users] == []


async def test_the_lock_rows_are_out_of_reach_of_every_role(login):
    for role in (None, "pgtasks_submitter", "pgtasks_worker", "pgtasks_reader", "pgtasks_admin"):
        c = await login(role)
        for table in ("locks", "concurrency_keys", "unsettled_edges"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await c.fetch(f"SELECT 1 FROM pgtasks.{table} FOR UPDATE")


async def test_a_role_without_grants_cannot_switch_maintenance_off(su, login):
    nobody = await login(None)
    await nobody.execute(MAINTAIN_KEY)  # any role may take an advisory lock
    tid = await su.fetchval("SELECT pgtasks.submit_task('t')")
    assert [r["id"] for r in await claim(su, lease="30 seconds")] == [tid]
    await su.fetchval("SELECT pgtasks.advance_clock(interval '31 seconds')")
    done = await su.fetchrow("SELECT * FROM pgtasks.maintain()")
    assert done["rescued"] == 1, "maintenance stopped while a role without grants held its key"
    assert await su.fetchval("SELECT status::text FROM pgtasks.tasks WHERE id = $1", tid) == (
        "COMMIT"
    )


async def test_a_role_without_grants_cannot_stall_a_concurrency_key(su, login):
    nobody = await login(None)
    await nobody.execute(KEY_LOCK, "customer:1")
    tid = await su.fetchval("SELECT pgtasks.submit_task('t', concurrency_key => 'customer:1')")
    assert [r["id"] for r in await claim(su)] == [tid]


async def test_a_key_is_decided_by_one_claimer_and_its_row_comes_back_after_pruning(
    su, observer, sec_dsn
):
    ids = [
        await su.fetchval(
            "SELECT pgtasks.submit_task('t', concurrency_key => 'k', concurrency_limit => 3)"
        )
        for _ in range(3)
    ]
    one = "SELECT id FROM pgtasks.claim_tasks($1, max_tasks => 1)"
    # The key's first claim makes its row.
    assert [r["id"] for r in await su.fetch(one, "w")] == ids[:1]
    other = await db.connect(sec_dsn)
    try:
        # While one claimer holds the key (its claim not committed yet), another skips the
        # key at once, though the limit leaves room: it neither waits nor counts.
        async with su.transaction():
            assert [r["id"] for r in await su.fetch(one, "w")] == ids[1:2]
            assert await without_waiting(observer, other, one, "w2") == []
        assert [r["id"] for r in await other.fetch(one, "w2")] == ids[2:]
        # A claimer that meets a key whose row another claim is making right now skips it
        # too, after at most the insert's lock_timeout, not at that claim's commit.
        fresh = await su.fetchval("SELECT pgtasks.submit_task('t', concurrency_key => 'new')")
        later = await su.fetchval("SELECT pgtasks.submit_task('t', concurrency_key => 'new')")
        async with su.transaction():
            assert [r["id"] for r in await su.fetch(one, "w")] == [fresh]
            call = asyncio.ensure_future(other.fetch(one, "w2"))

            async def done() -> bool:
                return call.done()

            await wait_until(done)
            assert call.result() == []
    finally:
        await other.close()
    # Idle for an hour with nothing running: pruned; the next claim makes the row again.
    for r in await su.fetch("SELECT id, lease_token FROM pgtasks.tasks WHERE status = 'RUNNING'"):
        await su.fetch(FINISH, r["id"], r["lease_token"])
    await su.fetchval("SELECT pgtasks.advance_clock(interval '61 minutes')")
    await su.fetch("SELECT * FROM pgtasks.maintain()")
    assert await su.fetchval("SELECT count(*) FROM pgtasks.concurrency_keys") == 0
    assert [r["id"] for r in await claim(su)] == [later]
    assert await su.fetchval("SELECT count(*) FROM pgtasks.concurrency_keys") == 1


async def test_a_worker_holding_a_limited_queue_open_stalls_no_other_claim(su, login, observer):
    """A claim of a queue with limits locks the queue's settings row until its transaction
    ends, so claimers count exactly. Any worker may hold that open: another worker's claim
    waits for it (seen in pg_blocking_pids), but only up to claim_limited's lock_timeout, and
    then claims what the other queues hold while the row is still held."""
    await su.execute("SELECT pgtasks.configure_queue('lim', max_running => 5)")
    lim = [await su.fetchval("SELECT pgtasks.submit_task('t', queue => 'lim')") for _ in range(3)]
    free = await su.fetchval("SELECT pgtasks.submit_task('t', queue => 'free')")
    squatter = await login("pgtasks_worker")
    tr = squatter.transaction()
    await tr.start()
    try:
        taken = await squatter.fetch("SELECT id FROM pgtasks.claim_tasks('squat', ARRAY['lim'])")
        assert [r["id"] for r in taken] == lim[:1]
        pid = su.get_server_pid()
        call = asyncio.ensure_future(
            su.fetch("SELECT id FROM pgtasks.claim_tasks('w', max_tasks => 10)")
        )

        async def blocked_by_squatter() -> bool:
            return call.done() or bool(
                await observer.fetchval(
                    "SELECT $2 = ANY (pg_blocking_pids($1))", pid, squatter.get_server_pid()
                )
            )

        await wait_until(blocked_by_squatter)  # it does wait for the row ...

        async def done() -> bool:
            return call.done()

        await wait_until(done)  # ... and comes back while the squatter still holds it
        assert [r["id"] for r in call.result()] == [free]
        only_lim = "SELECT id FROM pgtasks.claim_tasks('w', ARRAY['lim'], 10)"
        assert await su.fetch(only_lim) == []
    finally:
        await tr.rollback()
    assert sorted(r["id"] for r in await su.fetch(only_lim)) == lim


async def test_a_role_without_grants_cannot_stall_an_upgrade(su, login, sec_dsn):
    """Migrators used to serialise on an advisory key, which any role may take first. An
    upgrade locks the ledger instead, which that role may not lock: it runs while the key is
    held. (The newest delta is taken off the ledger so there is one to run again.)"""
    nobody = await login(None)
    await nobody.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        async with nobody.transaction():
            await nobody.execute("LOCK TABLE pgtasks.migrations IN SHARE UPDATE EXCLUSIVE MODE")
    last = available()[-1]
    await su.execute("DELETE FROM pgtasks.migrations WHERE version = $1", last.version)
    assert [m.version for m in await migrate_url(sec_dsn)] == [last.version]


async def test_a_first_install_blocked_by_the_advisory_key_names_its_holder(su, login, sec_dsn):
    """Before pgtasks exists there is nothing to protect, and no table to lock: a first
    install takes the advisory key, and whoever holds it is named after the wait."""
    role = await role_of(await login(None))
    base, _ = sec_dsn.rsplit("/", 1)
    name = f"fresh_{uuid.uuid4().hex[:8]}"
    await su.execute(f"CREATE DATABASE {name}")
    # Advisory keys are per database: the squatter connects to the one being installed.
    nobody = await asyncpg.connect(f"{base}/{name}".replace("postgres@", f"{role}@", 1))
    try:
        await nobody.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        with pytest.raises(MigrationBlocked, match=f"user {role}") as blocked:
            await migrate_url(f"{base}/{name}", lock_wait=0.2)
        assert blocked.value.blocker_pid == nobody.get_server_pid()
    finally:
        await nobody.close()
        await su.execute(f"DROP DATABASE {name} WITH (FORCE)")


# -- a submit stalls no worker -------------------------------------------------------------


async def test_an_open_depends_on_submit_stalls_no_worker(su, login, observer):
    sub = await login("pgtasks_submitter")
    await su.execute(f"GRANT pgtasks_reader TO {await role_of(sub)}")  # may name parents
    parent = await su.fetchval("SELECT pgtasks.submit_task('t')")
    (held,) = await claim(su)
    tr = sub.transaction()
    await tr.start()
    try:
        child = await sub.fetchval(
            "SELECT pgtasks.submit_task('t', depends_on => ARRAY[$1]::bigint[])", parent
        )
        # The worker holding the parent goes on as if nobody had submitted anything.
        assert await without_waiting(observer, su, HEARTBEAT, parent, held["lease_token"]) == []
        await without_waiting(observer, su, FINISH, parent, held["lease_token"])
    except BaseException:
        await tr.rollback()
        raise
    await tr.commit()
    # The parent ended while the submit was open: its commit released the child, once.
    assert await child_state(su, child) == ("PENDING", 0, 1)
    await su.fetch("SELECT * FROM pgtasks.maintain()")
    assert await child_state(su, child) == ("PENDING", 0, 1)


async def test_a_child_submitted_before_its_parent_ends_is_released_once(su, login):
    sub = await login("pgtasks_submitter")
    await su.execute(f"GRANT pgtasks_reader TO {await role_of(sub)}")
    parent = await su.fetchval("SELECT pgtasks.submit_task('t')")
    (held,) = await claim(su)
    child = await sub.fetchval(
        "SELECT pgtasks.submit_task('t', depends_on => ARRAY[$1]::bigint[])", parent
    )
    assert await child_state(su, child) == ("WAITING", 1, 0)
    await su.fetch(FINISH, parent, held["lease_token"])  # unsettled_edges leads to the child
    assert await child_state(su, child) == ("PENDING", 0, 1)
    await su.fetch("SELECT * FROM pgtasks.maintain()")
    assert await child_state(su, child) == ("PENDING", 0, 1)
    assert await su.fetchval("SELECT has_dependents FROM pgtasks.tasks WHERE id = $1", parent)
    assert await su.fetchval("SELECT count(*) FROM pgtasks.unsettled_edges") == 0


async def test_settling_early_stalls_no_worker_and_maintain_releases_the_child(su, login, observer):
    # SET CONSTRAINTS ALL IMMEDIATE runs the submit's settle at the end of its statement
    # instead of at commit, and the transaction stays open: the worker still waits for
    # nothing, and the child, whose parent then ended unseen, is released by maintain().
    sub = await login("pgtasks_submitter")
    await su.execute(f"GRANT pgtasks_reader TO {await role_of(sub)}")
    parent = await su.fetchval("SELECT pgtasks.submit_task('t')")
    (held,) = await claim(su)
    tr = sub.transaction()
    await tr.start()
    try:
        await sub.execute("SET CONSTRAINTS ALL IMMEDIATE")
        child = await sub.fetchval(
            "SELECT pgtasks.submit_task('t', depends_on => ARRAY[$1]::bigint[])", parent
        )
        await without_waiting(observer, su, HEARTBEAT, parent, held["lease_token"])
        await without_waiting(observer, su, FINISH, parent, held["lease_token"])
    except BaseException:
        await tr.rollback()
        raise
    await tr.commit()
    assert await child_state(su, child) == ("WAITING", 1, 0)
    await su.fetch("SELECT * FROM pgtasks.maintain()")
    assert await child_state(su, child) == ("PENDING", 0, 1)


async def test_a_parent_that_fails_while_the_submit_is_open_cancels_the_child(su, login, observer):
    sub = await login("pgtasks_admin")
    parent = await su.fetchval("SELECT pgtasks.submit_task('t', max_retries => 0)")
    (held,) = await claim(su)
    tr = sub.transaction()
    await tr.start()
    try:
        child = await sub.fetchval(
            "SELECT pgtasks.submit_task('t', depends_on => ARRAY[$1]::bigint[])", parent
        )
        await without_waiting(
            observer, su, "SELECT pgtasks.fail_task($1, $2, 'boom')", parent, held["lease_token"]
        )
    except BaseException:
        await tr.rollback()
        raise
    await tr.commit()
    row = await su.fetchrow(
        "SELECT status::text, cancelled_by, error FROM pgtasks.tasks WHERE id = $1", child
    )
    assert (row["status"], row["cancelled_by"]) == ("CANCELLED", parent)
    assert row["error"] == f"cancelled: parent task {parent} ended FAILED"


# -- depends_on names only what the caller may read -------------------------------------------


async def two_finished_parents(su: asyncpg.Connection) -> list[int]:
    ids = [await su.fetchval("SELECT pgtasks.submit_task('secret')") for _ in range(2)]
    for r in await claim(su):
        await su.fetch(
            'SELECT pgtasks.finish_task($1, $2, \'{"token": "s3cr3t"}\')', r["id"], r["lease_token"]
        )
    return ids


@pytest.mark.parametrize("role", ["pgtasks_worker", "pgtasks_submitter"])
async def test_depends_on_refuses_parents_the_caller_may_not_read(su, login, role):
    parents = await two_finished_parents(su)
    c = await login(role)
    before = await su.fetchval("SELECT count(*) FROM pgtasks.tasks")
    with pytest.raises(asyncpg.PostgresError) as info:
        await c.fetchval("SELECT pgtasks.submit_task('t', depends_on => $1::bigint[])", parents)
    assert info.value.sqlstate == "PT511", info.value
    assert info.value.message.startswith("pgtasks: ") and info.value.hint
    assert await su.fetchval("SELECT count(*) FROM pgtasks.tasks") == before
    # Without parents, and with a workflow's own nodes, nothing is refused.
    assert await c.fetchval("SELECT pgtasks.submit_task('t', depends_on => '{}')")
    nodes = await c.fetchval(
        "SELECT count(*) FROM jsonb_object_keys(pgtasks.submit_workflow($1::text::jsonb)->'nodes')",
        '{"nodes": [{"name": "a", "type": "t"}, {"name": "b", "type": "t", "after": ["a"]}]}',
    )
    assert nodes == 2


async def test_depends_on_follows_the_role_the_session_acts_as(su, login):
    parents = await two_finished_parents(su)
    admin = await login("pgtasks_admin")  # a reader too
    tid = await admin.fetchval(
        "SELECT pgtasks.submit_task('t', depends_on => $1::bigint[])", parents
    )
    assert await su.fetchval("SELECT waiting_on FROM pgtasks.tasks WHERE id = $1", tid) == 0
    # Narrowed to a submitter with SET ROLE, the same login may not.
    await admin.execute("SET ROLE pgtasks_submitter")
    with pytest.raises(asyncpg.PostgresError) as info:
        await admin.fetchval("SELECT pgtasks.submit_task('t', depends_on => $1::bigint[])", parents)
    assert info.value.sqlstate == "PT511"
