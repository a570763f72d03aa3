"""Where the database is: an explicit URL always wins, else the embedded server."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

ENV_URL = "PGTASKS_DATABASE_URL"
ENV_HOME = "PGTASKS_HOME"


def embedded_root() -> Path:
    """Folder of the embedded server: $PGTASKS_HOME, else `.pgtasks` in the current folder."""
    return Path(os.environ.get(ENV_HOME) or ".pgtasks")


def _configured(explicit: str | None) -> str | None:
    return explicit or os.environ.get(ENV_URL) or None


def database_url(explicit: str | None = None) -> str:
    """The DSN to use. With nothing configured, start (or reuse) the embedded server.

    The embedded server is ours, so its schema is kept current too: every command works on
    a fresh machine without a separate `pgtasks migrate`.
    """
    url = _configured(explicit)
    if url:
        return url
    from pgtasks.embedded import EmbeddedPostgres
    from pgtasks.migrations import migrate_url

    url = EmbeddedPostgres(embedded_root()).start()
    asyncio.run(migrate_url(url))
    return url


async def resolve_url(explicit: str | None = None) -> str:
    """`database_url` for code already inside an event loop."""
    url = _configured(explicit)
    if url:
        return url
    from pgtasks.embedded import EmbeddedPostgres
    from pgtasks.migrations import migrate_url

    url = await asyncio.to_thread(EmbeddedPostgres(embedded_root()).start)
    await migrate_url(url)
    return url
