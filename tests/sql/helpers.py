"""Small helpers shared by the SQL tests."""

from __future__ import annotations

import asyncpg
import pytest


async def raises(conn: asyncpg.Connection, sql: str, sqlstate: str, *args: object) -> None:
    """The statement fails with this pgtasks SQLSTATE, a pgtasks message and a HINT."""
    with pytest.raises(asyncpg.PostgresError) as info:
        await conn.fetch(sql, *args)
    assert info.value.sqlstate == sqlstate, info.value
    assert info.value.message.startswith("pgtasks: ")
    assert info.value.hint, "every pgtasks error says what to do"


async def expire_lease(conn: asyncpg.Connection, tid: int) -> None:
    """As if the worker holding the task stopped heartbeating a while ago."""
    await conn.execute(
        "UPDATE pgtasks.tasks SET lease_expires_at = now() - interval '1 second' WHERE id = $1",
        tid,
    )


#: The lease token of task $1's running attempt, read as the owner: what its claim returned
#: to the worker that holds it. NULL when the task is not RUNNING.
TOKEN = "(SELECT lease_token FROM pgtasks.tasks WHERE id = $1)"


async def token(conn: asyncpg.Connection, task_id: int) -> str | None:
    """The lease token the holder of the task got from its claim (see TOKEN)."""
    value = await conn.fetchval("SELECT lease_token FROM pgtasks.tasks WHERE id = $1", task_id)
    return None if value is None else str(value)


async def tokens(conn: asyncpg.Connection, task_ids: list[int]) -> list[str | None]:
    return [await token(conn, t) for t in task_ids]
