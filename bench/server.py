"""The one PostgreSQL server a benchmark run uses.

By default a private embedded server (pgtasks' own ``EmbeddedPostgres``, the server a fresh
clone gets) in a throw-away folder, so every system meets identical settings, no state survives
from an earlier run, and nothing collides with the ``.pgtasks/`` server of ``make run`` or of
the test suite. ``--dsn`` points a run at an existing server instead.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def benchmark_server(dsn: str | None = None) -> Iterator[str]:
    """Yield the DSN of the server to benchmark against; an embedded one unless ``dsn``.

    The embedded server is stopped and its folder deleted on the way out, also on Ctrl-C.
    """
    if dsn is not None:
        yield dsn
        return
    from pgtasks.embedded import EmbeddedPostgres

    folder = Path(tempfile.mkdtemp(prefix="pgtasks-bench-"))
    server = EmbeddedPostgres(folder)
    try:
        print(f"starting the embedded PostgreSQL in {folder} ...", file=sys.stderr, flush=True)
        yield server.start()
    finally:
        server.destroy()
        shutil.rmtree(folder, ignore_errors=True)
