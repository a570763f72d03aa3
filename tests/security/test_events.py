"""Events, attacked from the roles that could forge them.

An event resumes a task and hands its code data it acts on (an approval, a payment
callback), so sending one is a write to that task: only pgtasks_admin, which may already
cancel or retry any task, may send it. A submitter, a worker, a reader or a role with no
grant cannot, and what they try leaves no trace. Waiting and snoozing are fenced like every
call of an attempt (test_tokens.FENCED).
"""

from __future__ import annotations

import asyncpg

from tests.security.conftest import ROLES, Login
from tests.security.test_tokens import sqlstate

SEND = "SELECT pgtasks.send_event($1, 'approved', '{\"by\": \"mallory\"}')"


async def test_only_the_admin_sends_events(login: Login, su: asyncpg.Connection) -> None:
    tid = await su.fetchval("SELECT pgtasks.submit_task('t')")
    for role in (None, *[r for r in ROLES if r != "pgtasks_admin"]):
        c = await login(role)
        assert await sqlstate(c, SEND, tid) == "42501", role
        assert await sqlstate(c, "SELECT * FROM pgtasks.event_inbox") == "42501", role
    assert await su.fetchval("SELECT count(*) FROM pgtasks.event_inbox") == 0

    admin = await login("pgtasks_admin")
    assert await admin.fetchval(SEND, tid) is True
    sender = await admin.fetchval("SELECT session_user")
    reader = await login("pgtasks_reader")
    row = await reader.fetchrow("SELECT sent_by FROM pgtasks.task_inbox WHERE task_id = $1", tid)
    assert row["sent_by"] == sender  # the login role, not the functions' owner
    submitter = await login("pgtasks_submitter")
    assert await sqlstate(submitter, "SELECT * FROM pgtasks.task_inbox") == "42501"


async def test_a_worker_cannot_wait_or_snooze_for_a_task_it_does_not_hold(
    login: Login, su: asyncpg.Connection
) -> None:
    victim = await login("pgtasks_worker")
    attacker = await login("pgtasks_worker")
    tid = await su.fetchval("SELECT pgtasks.submit_task('t')")
    (held,) = await victim.fetch("SELECT * FROM pgtasks.claim_tasks('victim', max_tasks => 1)")
    for sql in (
        "SELECT * FROM pgtasks.wait_for_event($1, $2, 'approved')",
        "SELECT pgtasks.snooze_task($1, $2)",
    ):
        assert await sqlstate(attacker, sql, tid, "0" * 64) == "PT002", sql
    assert await su.fetchval("SELECT status::text FROM pgtasks.tasks WHERE id = $1", tid) == (
        "RUNNING"
    )
    assert await su.fetchval("SELECT count(*) FROM pgtasks.task_pauses") == 0
    assert held["id"] == tid
