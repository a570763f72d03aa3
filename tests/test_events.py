"""Durable waits: events (send_event / ctx.wait_for_event) and snoozes (Snooze /
ctx.snooze), with real workers, the test's psql connection as the sender, and the
database's clock moved for timeouts.

Counts come from the database (event_runs of tests/apps/events.py, the history, the task
row), never from the code under test. Timeouts only bound a hung test.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import asyncpg
import pytest

from pgtasks import Client, EventAfterFinish, InvalidArgument, LeaseLost, TaskNotFound
from tests.apps.events import EVENTS_DDL
from tests.conftest import ROOT, WorkerProcs, wait_for
from tests.fleet import StartWorker

PARKED = (
    "SELECT t.status = 'COMMIT' AND t.run_at > pgtasks.now() FROM pgtasks.tasks t WHERE t.id = $1"
)
# As psql sends it: the payload as JSON text.
SEND = "SELECT pgtasks.send_event(task_id => $1, name => 'approved', payload => $2::text::jsonb)"


@pytest.fixture
async def db(conn: asyncpg.Connection) -> asyncpg.Connection:
    await conn.execute(EVENTS_DDL)
    return conn


async def runs(db: asyncpg.Connection, task_id: int) -> list[tuple[str, int]]:
    rows = await db.fetch(
        "SELECT label, attempt FROM event_runs WHERE task_id = $1 ORDER BY at", task_id
    )
    return [(r["label"], r["attempt"]) for r in rows]


# -- events --------------------------------------------------------------------------------


async def test_a_waiting_task_holds_no_slot_and_resumes_with_the_payload_from_psql(
    db: asyncpg.Connection, client: Client, start_worker: StartWorker
) -> None:
    waiter = await client.submit("await_approval", {}, priority=1)
    await start_worker(concurrency=1)
    await wait_for(db, PARKED, waiter)
    # The only slot is free: 20 other tasks run while the first one waits.
    others = [await client.submit("event_quick") for _ in range(20)]
    for t in others:
        assert await client.wait(t, timeout=60) == "quick"
    assert await db.fetchval("SELECT status FROM pgtasks.tasks WHERE id = $1", waiter) == "COMMIT"

    # psql: a plain connection, no pgtasks code.
    assert await db.fetchval(SEND, waiter, json.dumps({"by": "ann"})) is True
    result = await client.wait(waiter, timeout=60)
    assert result["payload"] == {"by": "ann"}
    assert result["attempt"] == 2
    # The step before the wait ran once; the body twice (the resumed run starts at the top).
    assert await runs(db, waiter) == [
        ("body", 1), ("prepare", 1), ("body", 2), ("resumed", 2)
    ]  # fmt: skip
    info = await client.get(waiter)
    assert (info.status, info.retries) == ("DONE", "0/3")
    history = await db.fetch(
        "SELECT from_status, to_status, note FROM pgtasks.task_history WHERE task_id = $1"
        " ORDER BY at, to_status",
        waiter,
    )
    parked = [r for r in history if r["to_status"] == "COMMIT"]
    assert len(parked) == 1 and parked[0]["note"].startswith("waiting for event approved until")
    inbox = await client.inbox(waiter)
    assert [(e["name"], e["payload"], e["sent_by"]) for e in inbox] == [
        ("approved", {"by": "ann"}, await db.fetchval("SELECT session_user"))
    ]


async def test_an_event_sent_before_the_wait_is_kept_and_the_first_one_wins(
    db: asyncpg.Connection, client: Client, start_worker: StartWorker
) -> None:
    waiter = await client.submit("await_approval", {})
    assert await client.send_event(waiter, "approved", {"by": "early"}) is True
    assert await client.send_event(waiter, "approved", {"by": "late"}) is False  # kept first
    await start_worker(concurrency=1)
    result = await client.wait(waiter, timeout=60)
    assert (result["payload"], result["attempt"]) == ({"by": "early"}, 1)  # never parked
    statuses = await db.fetch(
        "SELECT to_status FROM pgtasks.task_history WHERE task_id = $1 ORDER BY at", waiter
    )
    assert "COMMIT" not in [r[0] for r in statuses]
    with pytest.raises(EventAfterFinish) as finished:
        await client.send_event(waiter, "approved", {"by": "after"})
    assert finished.value.sqlstate == "PT128" and finished.value.hint
    # Events go with their task when it is pruned.
    await db.execute("SELECT pgtasks.advance_clock(interval '1 second')")
    assert await db.fetchval("SELECT pgtasks.prune_finished(older_than => interval '0')") == 1
    assert await db.fetchval("SELECT count(*) FROM pgtasks.event_inbox") == 0


async def test_a_timeout_raises_event_timeout_inside_async_and_sync_tasks(
    db: asyncpg.Connection, client: Client, start_worker: StartWorker
) -> None:
    async_id = await client.submit("await_approval", {"timeout": 60})
    sync_id = await client.submit("sync_await_approval", {"timeout": 60})
    await start_worker(concurrency=2)
    for t in (async_id, sync_id):
        await wait_for(db, PARKED, t)
    await db.execute("SELECT pgtasks.advance_clock(interval '61 seconds')")
    assert await client.wait(async_id, timeout=60) == {"timed_out": "approved", "attempt": 2}
    assert await client.wait(sync_id, timeout=60) == {"timed_out": True, "attempt": 2}
    assert ("timeout", 2) in await runs(db, async_id)
    # Too late now: the task ended.
    with pytest.raises(EventAfterFinish):
        await client.send_event(async_id, "approved")


async def test_an_uncaught_timeout_fails_without_a_retry_and_a_manual_retry_waits_afresh(
    db: asyncpg.Connection, client: Client, start_worker: StartWorker
) -> None:
    task_id = await client.submit("sync_await_approval", {"timeout": 60, "uncaught": True})
    await start_worker(concurrency=1)
    await wait_for(db, PARKED, task_id)
    await db.execute("SELECT pgtasks.advance_clock(interval '61 seconds')")
    await wait_for(db, "SELECT status = 'FAILED' FROM pgtasks.tasks WHERE id = $1", task_id)
    row = await db.fetchrow("SELECT retry_count, error FROM pgtasks.tasks WHERE id = $1", task_id)
    assert row["retry_count"] == 0 and row["error"].startswith("EventTimeout: event 'approved'")
    # The retry forgets the wait that timed out: the task waits afresh, and an event now
    # resumes it.
    await db.execute("SELECT pgtasks.retry_task(task_id => $1)", task_id)
    await wait_for(db, PARKED, task_id)
    await client.send_event(task_id, "approved", "late but welcome")
    assert await client.wait(task_id, timeout=60) == {"payload": "late but welcome", "attempt": 4}


async def test_a_sync_task_waits_and_resumes_the_same_way(
    db: asyncpg.Connection, client: Client, start_worker: StartWorker
) -> None:
    task_id = await client.submit("sync_await_approval", {})
    await start_worker(concurrency=1)
    await wait_for(db, PARKED, task_id)
    await client.send_event(task_id, "approved", [1, 2, 3])
    assert await client.wait(task_id, timeout=60) == {"payload": [1, 2, 3], "attempt": 2}


@pytest.mark.slow
async def test_kill_9_while_waiting_and_the_event_resumes_the_task_on_another_worker(
    db: asyncpg.Connection, client: Client, spawn_worker: WorkerProcs
) -> None:
    waiter = await client.submit("await_approval", {})
    args = ("--lease", "2", "--concurrency", "1", "--poll-interval", "0.2")
    first = spawn_worker.start(*args, app="tests/apps/events.py")
    await wait_for(db, PARKED, waiter)
    first.kill()
    first.wait(10)
    second = spawn_worker.start(*args, app="tests/apps/events.py")
    await db.fetchval(SEND, waiter, json.dumps({"by": "bob"}))
    result = await client.wait(waiter, timeout=90)
    assert result["payload"] == {"by": "bob"}
    assert result["pid"] == second.pid
    pids = await db.fetch(
        "SELECT label, pid FROM event_runs WHERE task_id = $1 ORDER BY at", waiter
    )
    assert [(r["label"], r["pid"]) for r in pids] == [
        ("body", first.pid), ("prepare", first.pid), ("body", second.pid),
        ("resumed", second.pid),
    ]  # fmt: skip


async def test_send_event_and_wait_for_event_check_their_arguments_and_the_fence(
    db: asyncpg.Connection, client: Client
) -> None:
    task_id = await client.submit("await_approval", {})
    with pytest.raises(InvalidArgument) as bad_name:
        await client.send_event(task_id, "  ")
    assert bad_name.value.sqlstate == "PT126" and bad_name.value.hint
    with pytest.raises(TaskNotFound):
        await client.send_event(10**12, "approved")
    token = await db.fetchval(
        "SELECT lease_token FROM pgtasks.claim_tasks(worker_id => 'w', max_tasks => 1)"
    )
    for timeout in ("0 seconds", "2 years"):
        with pytest.raises(asyncpg.PostgresError) as bad_timeout:
            await db.execute(
                "SELECT * FROM pgtasks.wait_for_event($1, $2, 'approved', $3::text::interval)",
                task_id,
                token,
                timeout,
            )
        assert bad_timeout.value.sqlstate == "PT127"
    with pytest.raises(asyncpg.PostgresError) as stale:
        await db.execute(
            "SELECT * FROM pgtasks.wait_for_event($1, 'not-the-token', 'approved')", task_id
        )
    assert stale.value.sqlstate == "PT002"
    assert await db.fetchval("SELECT count(*) FROM pgtasks.event_inbox") == 0
    # A wait without a timeout parks the task; a late event wakes it at once.
    state = await db.fetchval(
        "SELECT state FROM pgtasks.wait_for_event($1, $2, 'approved')", task_id, token
    )
    assert state == "waiting"
    assert await db.fetchval(PARKED, task_id)
    async with client.pool.acquire() as listener:
        woken: asyncio.Queue[str] = asyncio.Queue()

        def heard(*args: Any) -> None:
            woken.put_nowait(args[3])

        await listener.add_listener("pgtasks_wakeup", heard)
        await db.fetchval(SEND, task_id, "true")
        await asyncio.wait_for(woken.get(), 30)
        await listener.remove_listener("pgtasks_wakeup", heard)
    assert await db.fetchval(
        "SELECT status = 'COMMIT' AND run_at <= pgtasks.now() FROM pgtasks.tasks WHERE id = $1",
        task_id,
    )
    with pytest.raises(asyncpg.PostgresError) as spent:  # the parked attempt's token
        await db.execute(
            "SELECT pgtasks.checkpoint(task_id => $1, lease_token => $2, step => 'x')",
            task_id,
            token,
        )
    assert spent.value.sqlstate == LeaseLost.sqlstate


# -- snoozes -------------------------------------------------------------------------------


async def test_five_snoozes_spend_no_retry_and_are_in_the_history(
    db: asyncpg.Connection, client: Client, start_worker: StartWorker
) -> None:
    task_id = await client.submit("snoozer", {"times": 5})
    sync_id = await client.submit("sync_snoozer", {"times": 5})
    await start_worker(concurrency=1)
    assert await client.wait(task_id, timeout=60) == {"attempt": 6, "retries": 0}
    assert await client.wait(sync_id, timeout=60) == 6
    for t in (task_id, sync_id):
        row = await db.fetchrow("SELECT retry_count, error FROM pgtasks.tasks WHERE id = $1", t)
        assert (row["retry_count"], row["error"]) == (0, None)
        notes = await db.fetch(
            "SELECT note FROM pgtasks.task_history WHERE task_id = $1 AND to_status = 'COMMIT'",
            t,
        )
        assert len(notes) == 5 and all(r["note"].startswith("snoozed until") for r in notes)


async def test_the_snooze_cap_fails_the_task_with_a_clear_error(
    db: asyncpg.Connection, client: Client, start_worker: StartWorker
) -> None:
    with pytest.raises(asyncpg.PostgresError) as bad:
        await db.execute("SELECT pgtasks.configure(max_snoozes => -1)")
    assert bad.value.sqlstate == "PT118"
    await db.execute("SELECT pgtasks.configure(max_snoozes => 2)")
    task_id = await client.submit("snoozer", {"times": 5})
    await start_worker(concurrency=1)
    await wait_for(db, "SELECT status = 'FAILED' FROM pgtasks.tasks WHERE id = $1", task_id)
    row = await db.fetchrow("SELECT retry_count, error FROM pgtasks.tasks WHERE id = $1", task_id)
    assert row["retry_count"] == 0
    assert "snoozed 2 times" in row["error"] and "max_snoozes" in row["error"]
    assert await runs(db, task_id) == [("body", 1), ("body", 2), ("body", 3)]
    with pytest.raises(asyncpg.PostgresError) as bad_delay:
        await db.execute("SELECT pgtasks.snooze_task(1, 'x', interval '-1 second')")
    assert bad_delay.value.sqlstate == "PT127"


# -- the example ---------------------------------------------------------------------------


@pytest.mark.slow
def test_examples_approval_runs_to_its_published_result(dsn: str) -> None:
    proc = subprocess.run(
        [sys.executable, "examples/approval.py", "--auto"],
        cwd=ROOT,
        env={**os.environ, "PGTASKS_DATABASE_URL": dsn},
        capture_output=True,
        text=True,
        timeout=120,  # bounds a hung example only
    )
    assert proc.returncode == 0, proc.stderr
    assert "'published': True" in proc.stdout and "the example" in proc.stdout


# -- interleavings -------------------------------------------------------------------------

BLOCKED = (
    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock')"
)


@pytest.mark.parametrize("first", ["wait", "send"])
async def test_a_wait_and_a_send_that_race_end_with_the_task_resumed(
    db: asyncpg.Connection, dsn: str, first: str
) -> None:
    """Both lock the task's row, so one waits for the other. Wait first: the send finds
    the task parked and wakes it. Send first: the wait finds the event and goes on."""
    task_id = await db.fetchval("SELECT pgtasks.submit_task('t')")
    token = await db.fetchval(
        "SELECT lease_token FROM pgtasks.claim_tasks(worker_id => 'w', max_tasks => 1)"
    )
    waiter, sender = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    wait = "SELECT state FROM pgtasks.wait_for_event($1, $2, 'approved', interval '1 hour')"
    try:
        holder, other = (waiter, sender) if first == "wait" else (sender, waiter)
        tx = holder.transaction()
        await tx.start()
        if first == "wait":
            assert await waiter.fetchval(wait, task_id, token) == "waiting"
            late = asyncio.create_task(sender.fetchval(SEND, task_id, '{"by": "ann"}'))
        else:
            assert await sender.fetchval(SEND, task_id, '{"by": "ann"}') is True
            late = asyncio.create_task(waiter.fetchval(wait, task_id, token))
        await wait_for(db, BLOCKED, other.get_server_pid())
        await tx.commit()
        answer = await asyncio.wait_for(late, 30)
    finally:
        await waiter.close()
        await sender.close()
    row = await db.fetchrow(
        "SELECT status::text, run_at <= pgtasks.now() AS ready FROM pgtasks.tasks WHERE id = $1",
        task_id,
    )
    if first == "wait":
        assert answer is True
        assert (row["status"], row["ready"]) == ("COMMIT", True)  # woken: claimable now
    else:
        assert answer == "received"
        assert row["status"] == "RUNNING"  # never parked
