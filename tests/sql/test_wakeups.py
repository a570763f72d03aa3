"""Wake-ups (sql/0008): the insert trigger NOTIFYs pgtasks_wakeup with the queue's tag, once
per statement and queue, only for ready work whose queue head was not already ready, and
not at all with `pgtasks.wake_workers = off`. Delivery is awaited with a marker notification
sent after the statement by the same session (a session's notifications arrive in order).

A payload names no queue (any role may LISTEN): it is pgtasks.queue_tag(queue), 8 hex
digits. The tests turn tags back into the names of the queues they used, as a worker does
for its own queues, and check every payload is a tag."""

from __future__ import annotations

import asyncio
import re
import uuid

import asyncpg
import pytest

from pgtasks import db
from pgtasks.migrations import migrate_url
from tests.sql.helpers import TOKEN


@pytest.fixture
async def woken(dsn):
    """(submitter connection, function that runs SQL and returns the queues woken by it)."""
    listener = await db.connect(dsn)
    submitter = await db.connect(dsn)
    got: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("pgtasks_wakeup", lambda *args: got.put_nowait(args[3]))

    async def run(sql: str, *args: object) -> list[str]:
        await submitter.execute(sql, *args)
        await submitter.execute("SELECT pg_notify('pgtasks_wakeup', '<marker>')")
        names = dict(
            await submitter.fetch(
                "SELECT pgtasks.queue_tag(q), q FROM (SELECT queue FROM pgtasks.tasks"
                " UNION SELECT queue FROM pgtasks.queue_settings) AS t(q)"
            )
        )
        out = []
        while (payload := await asyncio.wait_for(got.get(), 30)) != "<marker>":
            assert re.fullmatch("[0-9a-f]{8}", payload), payload
            out.append(names.get(payload, payload))
        return out

    try:
        yield submitter, run
    finally:
        await listener.close()
        await submitter.close()


async def test_ready_submit_wakes_its_queue_once_until_the_head_is_taken(woken):
    conn, run = woken
    submit = "SELECT pgtasks.submit_task('t', queue => $1)"
    assert await run(submit, "q1") == ["q1"]
    # The head of q1 was ready before: a worker was woken for it already.
    assert await run(submit, "q1") == []
    assert await run(submit, "q2") == ["q2"]
    # Claimed heads: the next submit is new work again.
    await conn.execute("SELECT count(*) FROM pgtasks.claim_tasks('w', ARRAY['q1'], 10)")
    assert await run(submit, "q1") == ["q1"]


async def test_future_tasks_wake_nobody(woken):
    _conn, run = woken
    assert await run("SELECT pgtasks.submit_task('t', run_at => now() + interval '1 hour')") == []


async def test_wake_ups_decide_by_the_test_clock(woken):
    """The trigger reads pgtasks.now() (once per statement, not per row): with the clock an hour
    ahead, a batch due in half an hour of wall time is ready and wakes its queue, and one due
    half an hour past the moved clock is not. Without the shift both would be in the future."""
    conn, run = woken
    await conn.execute("SELECT pgtasks.advance_clock(interval '1 hour')")
    batch = (
        "SELECT count(*) FROM pgtasks.submit_tasks('t', ARRAY['{}', '{}']::jsonb[],"
        " queue => $1, run_at => $2::timestamptz)"
    )
    ahead = await conn.fetchval("SELECT pgtasks.now() + interval '30 minutes'")
    soon = await conn.fetchval("SELECT now() + interval '30 minutes'")
    assert await run(batch, "q-later", ahead) == []
    assert await run(batch, "q-due", soon) == ["q-due"]


async def test_batches_wake_each_queue_once(woken):
    _conn, run = woken
    batch = "SELECT count(*) FROM pgtasks.submit_tasks('t', ARRAY['{}', '{}', '{}']::jsonb[])"
    assert await run(batch) == ["default"]
    assert await run(batch) == []
    # One statement into several queues (a hand-written INSERT ... SELECT).
    multi = "INSERT INTO pgtasks.tasks (task_type, queue) SELECT 't', q FROM unnest($1::text[]) q"
    assert sorted(await run(multi, ["a", "b", "b", "default"])) == ["a", "b"]


async def test_setting_switches_wake_ups_off_and_history_stays(woken):
    conn, run = woken
    await conn.execute("SET pgtasks.wake_workers = off")
    tid = await conn.fetchval("SELECT pgtasks.submit_task('t', queue => 'quiet')")
    assert await run("SELECT pgtasks.submit_task('t', queue => 'quiet2')") == []
    events = await conn.fetchval("SELECT count(*) FROM pgtasks.task_events WHERE task_id = $1", tid)
    assert events == 1
    await conn.execute("SET pgtasks.wake_workers = on")
    assert await run("SELECT pgtasks.submit_task('t', queue => 'loud')") == ["loud"]


async def test_database_setting_reaches_new_sessions(dsn, conn):
    name = await conn.fetchval("SELECT current_database()")
    await conn.execute(f'ALTER DATABASE "{name}" SET pgtasks.wake_workers = off')
    fresh: asyncpg.Connection = await db.connect(dsn)
    try:
        assert await fresh.fetchval("SELECT current_setting('pgtasks.wake_workers', true)") == "off"
    finally:
        await fresh.close()


async def test_upgrade_keeps_a_disabled_wake_up_trigger_off(server):
    """A database that had disabled 0001's trigger tasks_wake_workers gets the setting
    pgtasks.wake_workers = off from 0008, so its wake-ups stay off after the upgrade."""
    admin = await asyncpg.connect(server.url())
    name = f"wake_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        await migrate_url(server.url(name), up_to=7)
        conn = await asyncpg.connect(server.url(name))
        try:
            await conn.execute("ALTER TABLE pgtasks.tasks DISABLE TRIGGER tasks_wake_workers")
        finally:
            await conn.close()
        await migrate_url(server.url(name))
        conn = await asyncpg.connect(server.url(name))
        try:
            assert (
                await conn.fetchval("SELECT current_setting('pgtasks.wake_workers', true)") == "off"
            )
        finally:
            await conn.close()
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


async def test_waiting_tasks_wake_nobody_until_released(woken):
    """sql/0015: a WAITING node is not claimable, so inserting it wakes nobody; the release
    when its parent finishes is what wakes a worker."""
    conn, run = woken
    parent = await conn.fetchval("SELECT pgtasks.submit_task('t', queue => 'wf')")
    await conn.fetchval("SELECT count(*) FROM pgtasks.claim_tasks('w', ARRAY['wf'], 10)")
    assert await run("SELECT 1") == ["wf"]  # the parent's own wake-up, drained
    child = "SELECT pgtasks.submit_task('t', queue => 'wf', depends_on => ARRAY[$1::bigint])"
    assert await run(child, parent) == []
    # A whole workflow whose roots are ready wakes once, for its roots' queue only.
    spec = (
        '{"nodes": [{"name": "a", "type": "t", "queue": "roots"},'
        ' {"name": "b", "type": "t", "queue": "later", "after": ["a"]}]}'
    )
    assert await run(f"SELECT pgtasks.submit_workflow('{spec}'::jsonb)") == ["roots"]
    assert await run(f"SELECT pgtasks.finish_task($1, {TOKEN})", parent) == ["wf"]
