"""Connections: JSON codecs set once, and PT SQLSTATEs turned into typed exceptions."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg

from pgtasks.errors import translate

T = TypeVar("T")


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


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        url, min_size=min_size, max_size=max_size, init=init_connection
    )
    assert pool is not None
    return pool


async def call(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Await an asyncpg call, re-raising pgtasks' SQLSTATEs as their typed exceptions."""
    try:
        return await fn(*args)
    except asyncpg.PostgresError as exc:
        mapped = translate(exc)
        if mapped is exc:
            raise
        raise mapped from exc


@asynccontextmanager
async def translated() -> AsyncIterator[None]:
    try:
        yield
    except asyncpg.PostgresError as exc:
        mapped = translate(exc)
        if mapped is exc:
            raise
        raise mapped from exc
