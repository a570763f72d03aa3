"""Child tasks, attacked from the roles around them.

Spawning and waiting are calls of a running attempt, fenced by its lease token
(test_tokens.FENCED also sends them with guessed tokens). A spawn gives a worker no power
a submitter lacks, and the results it reads back are those of its own children only.
Readers see the tree; submitters, whose view shows no params or results, do not.
"""

from __future__ import annotations

import asyncpg

from tests.security.conftest import Login
from tests.security.test_tokens import sqlstate

CLAIM = "SELECT * FROM pgtasks.claim_tasks($1, max_tasks => 1, task_types => $2)"
SPAWN = "SELECT pgtasks.spawn_children($1, $2, 'spawn#1', '[{\"type\": \"kid\"}]')"


async def test_only_the_holder_spawns_and_reads_only_its_own_children(
    login: Login, su: asyncpg.Connection
) -> None:
    victim = await login("pgtasks_worker")
    attacker = await login("pgtasks_worker")
    tid = await su.fetchval("SELECT pgtasks.submit_task('fan')")
    other = await su.fetchval("SELECT pgtasks.submit_task('fan2')")
    (held,) = await victim.fetch(CLAIM, "victim", ["fan"])
    (mine,) = await attacker.fetch(CLAIM, "attacker", ["fan2"])
    assert (held["id"], mine["id"]) == (tid, other)
    # The attacker's own real token does not hold the victim's task.
    assert await sqlstate(attacker, SPAWN, tid, mine["lease_token"]) == "PT002"
    assert await su.fetchval("SELECT count(*) FROM pgtasks.tasks WHERE task_type = 'kid'") == 0

    (kid,) = await victim.fetchval(SPAWN, tid, held["lease_token"])
    (k,) = await su.fetch(CLAIM, "w", ["kid"])
    await su.execute(
        "SELECT pgtasks.finish_task($1, $2, '{\"secret\": 42}')", kid, k["lease_token"]
    )
    # The attacker's wait sees the children of its own task (none), not the victim's.
    state, results = await attacker.fetchrow(
        "SELECT state, results::text FROM pgtasks.wait_for_children($1, $2)",
        other, mine["lease_token"],
    )  # fmt: skip
    assert (state, results) == ("done", "[]")
    assert await sqlstate(attacker, "SELECT * FROM pgtasks.task_spawns") == "42501"


async def test_readers_see_the_tree_and_submitters_do_not(
    login: Login, su: asyncpg.Connection
) -> None:
    tid = await su.fetchval("SELECT pgtasks.submit_task('fan')")
    (p,) = await su.fetch(CLAIM, "w", ["fan"])
    (kid,) = await su.fetchval(SPAWN, tid, p["lease_token"])
    reader = await login("pgtasks_reader")
    assert await reader.fetchval(
        "SELECT child_id FROM pgtasks.task_children WHERE parent_id = $1", tid
    ) == kid  # fmt: skip
    assert (
        await reader.fetchval("SELECT spawned_by FROM pgtasks.task_status WHERE id = $1", kid)
        == tid
    )
    for role in ("pgtasks_submitter", "pgtasks_worker"):
        c = await login(role)
        assert await sqlstate(c, "SELECT * FROM pgtasks.task_children") == "42501", role
        assert await sqlstate(c, "SELECT * FROM pgtasks.wake_spawners(ARRAY[1::bigint])") == "42501"
        assert (
            await sqlstate(c, "SELECT * FROM pgtasks.cancel_children(ARRAY[1::bigint])") == "42501"
        )
