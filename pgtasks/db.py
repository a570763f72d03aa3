"""Connections: a pinned search_path and JSON codecs set once, PT SQLSTATEs turned into typed
exceptions, and the one list of errors that mean "retry this later".

This is the only module that looks at SQLSTATEs; everything else catches classes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from pgtasks.errors import ConfigurationError, Undecodable, translate

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
    # asyncpg raises this when the server ends a session in the middle of a query: seen
    # here on every server restart under load. The pool drops the broken connection; the
    # call just has to be retried on a fresh one.
    asyncpg.InternalClientError,
    # lock_timeout (55P03): a fenced call found the task's row locked by another session
    # (an operator's open transaction) for longer than the function's bound, and wrote
    # nothing. The lease is not lost; the call is tried again on the next round.
    asyncpg.LockNotAvailableError,
)

#: TRANSIENT plus every error the server answers with: what a call that may fail without
#: harm (a peek, a probe, a best-effort flush) catches.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT, asyncpg.PostgresError)

#: The search_path of every connection pgtasks opens for its own statements.
#:
#: What it protects: the statements in pgtasks.queries name every pgtasks object with its
#: schema, but the operators and built-in functions between those names (`status = $1` on
#: two pgtasks.status values, `array_agg(text)`, `unnest(bigint[], ...)`) are looked up
#: through search_path when the statement is parsed, and a function or operator whose
#: argument types match more exactly wins over pg_catalog's polymorphic one, whatever
#: schema it is in. With the default path (`"$user", public`), any role allowed to
#: create in public (every role, on PostgreSQL 14 and older) could plant
#: `public.=(pgtasks.status, pgtasks.status)` or `public.array_agg(text)` and have its
#: code run with the rights of whoever lists tasks by status or flushes a task's logs:
#: an admin's CLI, the dashboard, a worker. With only pg_catalog and pgtasks on the path
#: (whose owners alone can create there) such a plant is never seen; pg_temp goes last,
#: so a temporary table cannot shadow a pgtasks view either.
#:
#: It travels in the startup packet (asyncpg's server_settings), so it holds from the
#: first statement of every connection, including each one a pool opens or reopens.
#: PgBouncer refuses startup parameters it does not track ("unsupported startup
#: parameter: search_path", which db.connect turns into a ConfigurationError saying this):
#: there, list it in `ignore_startup_parameters` and pin it on the server instead, with
#: `ALTER ROLE ... SET search_path = pg_catalog, pgtasks, pg_temp` (or ALTER DATABASE),
#: which outlives any client's RESET ALL on a shared server connection (a `connect_query`
#: does not). Every session of that role then has it, a task's `ctx.pool` included.
#: A worker warns at start when its session's search_path is not this one.
SEARCH_PATH = "pg_catalog, pgtasks, pg_temp"

#: What a pool runs on a connection it takes back (asyncpg's `reset`).
Reset = Callable[[asyncpg.Connection], Awaitable[None]]


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def loads(text: str) -> Any:
    """json.loads for the codec; a value Python cannot decode becomes `Undecodable`."""
    try:
        return json.loads(text)
    except (RecursionError, ValueError) as exc:
        why = "nested too deep" if isinstance(exc, RecursionError) else str(exc)[:200]
        return Undecodable(f"<JSON of {len(text)} characters Python cannot decode: {why}>")


async def init_connection(conn: asyncpg.Connection) -> None:
    """jsonb and json travel as Python objects in both directions; each value is decoded on
    its own, so one that cannot be decoded fails only its row (`Undecodable`)."""
    for typename in ("jsonb", "json"):
        await conn.set_type_codec(
            typename, encoder=dumps, decoder=loads, schema="pg_catalog", format="text"
        )


def server_settings(
    application_name: str | None = None, *, pin_search_path: bool = True
) -> dict[str, str]:
    """The startup parameters of a pgtasks connection: the pinned SEARCH_PATH and, when
    given, an `application_name` (what pg_stat_activity shows; PostgreSQL keeps 63 bytes)."""
    settings = {"search_path": SEARCH_PATH} if pin_search_path else {}
    if application_name is not None:
        settings["application_name"] = application_name[:63]
    return settings


@asynccontextmanager
async def _startup_refused() -> AsyncIterator[None]:
    """A pooler that refuses the pinned search_path is a set-up to fix, not an outage to
    wait out (its error is a connection error, which TRANSIENT would retry forever)."""
    try:
        yield
    except asyncpg.ProtocolViolationError as exc:
        if "search_path" not in str(exc):
            raise
        raise ConfigurationError(
            f"the server refused the pinned search_path ({exc}); behind PgBouncer add "
            "`ignore_startup_parameters = search_path` and pin it on the server: "
            f"ALTER ROLE <role> SET search_path = {SEARCH_PATH}"
        ) from exc


async def connect(
    url: str,
    *,
    application_name: str | None = None,
    codecs: bool = True,
    statement_cache_size: int = 100,
    timeout: float = 60,
) -> asyncpg.Connection:
    """One connection with the pinned search_path; `codecs`: with the JSON codecs (off for
    a LISTEN-only connection, which sends no statement that returns JSON)."""
    async with _startup_refused():
        conn: asyncpg.Connection = await asyncpg.connect(
            url,
            statement_cache_size=statement_cache_size,
            timeout=timeout,
            server_settings=server_settings(application_name),
        )
    if codecs:
        await init_connection(conn)
    return conn


async def create_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    application_name: str | None = None,
    statement_cache_size: int = 100,
    reset: Reset | None = None,
    pin_search_path: bool = True,
) -> asyncpg.Pool:
    """A pool whose connections decode JSON and have the pinned search_path.

    `pin_search_path=False` is for a pool that carries someone else's SQL with the
    database's own search_path (a task's `ctx.pool`): pgtasks sends nothing on it.
    """
    async with _startup_refused():
        pool: asyncpg.Pool = await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            init=init_connection,
            reset=reset,
            statement_cache_size=statement_cache_size,
            server_settings=server_settings(application_name, pin_search_path=pin_search_path),
        )
    return pool


async def no_reset(_conn: asyncpg.Connection) -> None:
    """Release without asyncpg's reset query (one round trip per release, ~15 % of a drain):
    for pools whose statements leave no session state to undo."""


@asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """Re-raise a PT SQLSTATE as its pgtasks exception class (others pass through)."""
    try:
        yield
    except asyncpg.PostgresError as exc:
        mapped = translate(exc)
        if mapped is exc:
            raise
        raise mapped from exc
