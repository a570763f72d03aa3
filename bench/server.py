"""The one PostgreSQL server a benchmark run uses, and what else a result file records.

By default a private embedded server (pgtasks' own ``EmbeddedPostgres``, the server a fresh
clone gets) in a throw-away folder, so every system meets identical settings, no state survives
from an earlier run, and nothing collides with the ``.pgtasks/`` server of ``make run`` or of
the test suite. ``--dsn`` points a run at an existing server instead.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def benchmark_server(
    dsn: str | None = None, *, max_connections: int | None = None
) -> Iterator[str]:
    """Yield the DSN of the server to benchmark against; an embedded one unless ``dsn``.

    ``max_connections`` starts the embedded server with that limit instead of its own (300).
    The embedded server is stopped and its folder deleted on the way out, also on Ctrl-C.
    """
    if dsn is not None:
        yield dsn
        return
    from pgtasks.embedded import EmbeddedPostgres

    class LimitedPostgres(EmbeddedPostgres):
        """The embedded server takes no settings, so this wraps its private ``_pg_ctl``:
        pg_ctl passes every ``-o`` on to postgres, and of two ``-c`` the last one wins.
        Whoever relies on the limit checks ``SHOW max_connections`` (``run_maxconn`` does)."""

        def _pg_ctl(self, args: list[str], *, timeout: float) -> None:
            if max_connections is not None and args[:1] == ["start"]:
                args = [*args, "-o", f"-c max_connections={max_connections}"]
            super()._pg_ctl(args, timeout=timeout)

    folder = Path(tempfile.mkdtemp(prefix="pgtasks-bench-"))
    server = LimitedPostgres(folder)
    try:
        print(f"starting the embedded PostgreSQL in {folder} ...", file=sys.stderr, flush=True)
        yield server.start()
    finally:
        server.destroy()
        shutil.rmtree(folder, ignore_errors=True)


def _other_pytest_processes() -> int:
    """How many pytest processes are running: other engineers' test suites share the cores."""
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"pytest" in cmdline:
            count += 1
    return count


def machine_load() -> dict[str, Any]:
    """A snapshot of how busy the machine is, stored with the figures so noise can be judged."""
    one, five, fifteen = os.getloadavg()
    return {
        "loadavg_1_5_15": [round(one, 2), round(five, 2), round(fifteen, 2)],
        "pytest_processes": _other_pytest_processes(),
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def provenance() -> dict[str, Any]:
    """Which code was measured: the commit, whether sql/ or pgtasks/ differed from it, and a
    hash of the SQL files, so two result files can be told apart even between commits."""
    digest = hashlib.sha256()
    for path in sorted((REPO_ROOT / "sql").glob("*.sql")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    dirty = _git("status", "--porcelain", "--", "sql", "pgtasks")
    return {
        "commit": _git("rev-parse", "HEAD"),
        "uncommitted_changes_in": sorted({line[3:].split("/")[0] for line in dirty.splitlines()})
        if dirty
        else [],
        "sql_sha256": digest.hexdigest()[:16],
    }
