"""The harness itself: a login role has exactly the rights of the role it was made from."""

from __future__ import annotations

import asyncpg
import pytest


async def test_a_role_without_grants_reaches_nothing(login):
    nobody = await login(None)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await nobody.fetchval("SELECT pgtasks.submit_task('t')")


async def test_a_submitter_submits_and_cannot_claim(login):
    sub = await login("pgtasks_submitter")
    assert await sub.fetchval("SELECT pgtasks.submit_task('t')") >= 1
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await sub.fetch("SELECT * FROM pgtasks.claim_tasks('w', max_tasks => 1)")
