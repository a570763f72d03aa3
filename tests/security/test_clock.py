"""The test clock: pgtasks.now() moves when the owner says so, and for nobody else.

Leases, backoff and the like are tested by moving it instead of sleeping; these tests prove
that moving it is what makes a deadline pass, and that no role can move it.
"""

from __future__ import annotations

import asyncpg
import pytest

from tests.security.conftest import ROLES


async def test_the_clock_moves_only_forward_and_only_for_the_owner(su, login):
    before = await su.fetchval("SELECT pgtasks.now() - now()")
    assert before == await su.fetchval("SELECT interval '0'")
    moved = await su.fetchval("SELECT pgtasks.advance_clock(interval '1 hour') - now()")
    assert moved == await su.fetchval("SELECT interval '1 hour'")
    for bad in ("interval '0'", "interval '-1 second'", "NULL"):
        with pytest.raises(asyncpg.PostgresError) as info:
            await su.fetchval(f"SELECT pgtasks.advance_clock({bad})")
        assert info.value.sqlstate == "PT122"
    for role in (*ROLES, None):
        c = await login(role)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await c.fetchval("SELECT pgtasks.advance_clock(interval '1 day')")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await c.execute("UPDATE pgtasks.clock SET shift = interval '1 day'")
    assert await su.fetchval("SELECT pgtasks.now() - now()") == moved


async def test_a_lease_expires_when_the_clock_passes_it(su):
    tid = await su.fetchval("SELECT pgtasks.submit_task('t')")
    (claim,) = await su.fetch(
        "SELECT * FROM pgtasks.claim_tasks('w', max_tasks => 1, lease => interval '30 seconds')"
    )
    assert claim["id"] == tid
    assert await su.fetchval("SELECT pgtasks.rescue_expired()") == 0
    await su.fetchval("SELECT pgtasks.advance_clock(interval '29 seconds')")
    assert await su.fetchval("SELECT pgtasks.rescue_expired()") == 0, "not yet expired"
    await su.fetchval("SELECT pgtasks.advance_clock(interval '2 seconds')")
    assert await su.fetchval("SELECT pgtasks.rescue_expired()") == 1
    assert await su.fetchval("SELECT status::text FROM pgtasks.tasks WHERE id = $1", tid) == (
        "COMMIT"
    )


async def test_a_retry_waits_for_its_backoff_on_the_clock(su):
    tid = await su.fetchval("SELECT pgtasks.submit_task('t', backoff_base => interval '1 minute')")
    (claim,) = await su.fetch("SELECT * FROM pgtasks.claim_tasks('w', max_tasks => 1)")
    await su.execute("SELECT pgtasks.fail_task($1, $2, 'boom')", tid, claim["lease_token"])
    delay = await su.fetchval("SELECT run_at - pgtasks.now() FROM pgtasks.tasks WHERE id = $1", tid)
    assert delay.total_seconds() > 0
    assert await su.fetch("SELECT * FROM pgtasks.claim_tasks('w', max_tasks => 1)") == []
    await su.fetchval("SELECT pgtasks.advance_clock($1)", delay)
    (again,) = await su.fetch("SELECT * FROM pgtasks.claim_tasks('w', max_tasks => 1)")
    assert again["id"] == tid
