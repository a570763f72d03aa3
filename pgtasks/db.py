"""Connections: JSON codecs set once, PT SQLSTATEs turned into typed exceptions, and the one
list of errors that mean "retry this later".

This is the only module that looks at SQLSTATEs; everything else catches classes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg

from pgtasks.errors import translate

T = TypeVar("T")

#: Errors that mean "the database is unreachable (or the row busy) right now", not "this
#: call is wrong": retry the call later (on a fresh connection), never give up on the task
#: for them.
TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    # asyncpg can raise this when the server ends a session mid-query (asyncpg#784,
    # #1069): seen here on every server restart under load. The pool drops the broken
    # connection; the call just has to be retried on a fresh one.
    asyncpg.InternalClientError,
    # lock_timeout (55P03): a fenced call found the task's row locked by another session
    # (an operator's open transaction) for longer than the function's bound, and wrote
    # nothing. The lease is not lost; the call is tried again on the next round.
    asyncpg.LockNotAvailableError,
)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


async def init_connection(conn: asyncpg.Connection) -> None:
    """jsonb and json travel as Python objects in both directions."""
    for typename in ("jsonb", "json"):
        await conn.set_type_codec(
            typename, encoder=dumps, decoder=json.loads, schema="pg_catalog", format="text"
        )


async def connect(url: str, **kwargs: Any) -> asyncpg.Connection:
    conn = await asyncpg.connect(url, **kwargs)
    await init_connection(conn)
    return conn


async def create_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    application_name: str | None = None,
    **kwargs: Any,
) -> asyncpg.Pool:
    """A pool whose connections decode JSON; `application_name` shows in pg_stat_activity."""
    if application_name is not None:
        kwargs["server_settings"] = {
            **kwargs.get("server_settings", {}),
            "application_name": application_name[:63],
        }
    pool = await asyncpg.create_pool(
        url, min_size=min_size, max_size=max_size, init=init_connection, **kwargs
    )
    assert pool is not None
    return pool


async def no_reset(_conn: asyncpg.Connection) -> None:
    """Release without asyncpg's reset query (one round trip per release, ~15 % of a drain):
    for pools whose statements leave no session state to undo."""


async def call(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Await an asyncpg call, re-raising pgtasks' SQLSTATEs as their typed exceptions."""
    async with translated():
        return await fn(*args)


@asynccontextmanager
async def translated() -> AsyncIterator[None]:
    try:
        yield
    except asyncpg.PostgresError as exc:
        mapped = translate(exc)
        if mapped is exc:
            raise
        raise mapped from exc
