"""Diagnostic only: the pgtasks bench worker with asyncpg's pool reset switched off.

asyncpg's ``Pool`` runs a reset query (``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN
*; RESET ALL``) every time a connection goes back to the pool, i.e. one extra round trip after
every ``pool.fetch``. The pgtasks Worker used to claim and complete through such a pool; this
module measured what that cost by giving every pool the Worker creates a no-op ``reset``
(``python -m bench.ablations --only batch``). The Worker now claims and completes on a pool
without the reset, so today the only difference left is the task pool's reset, which a
no-op job never uses. Kept to reproduce the before/after in docs/performance.md; it patches
nothing on disk and is never used by ``make bench``.
"""

from __future__ import annotations

import sys
from typing import Any

import asyncpg

_create_pool = asyncpg.create_pool


async def _no_reset(_conn: asyncpg.Connection) -> None:
    """Keep the session as the worker left it: the worker sets no session state to undo."""


def _create_pool_without_reset(*args: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("reset", _no_reset)
    return _create_pool(*args, **kwargs)


# The Worker calls asyncpg.create_pool through the module, so this reaches it.
asyncpg.create_pool = _create_pool_without_reset


if __name__ == "__main__":
    from bench import peer_pgtasks
    from bench.common import peer_main

    sys.exit(
        peer_main(
            sys.argv[1:],
            name="_worker_no_pool_reset",
            run=peer_pgtasks.run,
            serve=peer_pgtasks.serve,
            add_worker_arguments=peer_pgtasks._add_worker_arguments,
        )
    )
