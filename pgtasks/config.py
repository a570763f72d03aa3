"""Where the database is: an explicit URL always wins, else an embedded server that exists.

Nothing here creates an embedded server. A command that silently made a fresh PostgreSQL
wherever it happened to run (another folder, a forgotten PGTASKS_DATABASE_URL) would answer
"task 1 does not exist" about tasks that are safe in the real database; so only
`pgtasks db start` (or `EmbeddedPostgres(...).start()`) makes one, and everything else uses
the one it finds or says what to do.

How the embedded server is found, when no URL is set:

* `$PGTASKS_HOME` names its folder outright: that folder or none (no search).
* Otherwise, like git looking for `.git`: the nearest `.pgtasks` folder in the current
  folder or a parent, so a command run anywhere inside a project uses the project's server.
  The search stops at the project root, the first folder holding `pyproject.toml` or `.git`:
  a `.pgtasks` above it belongs to another project (or to the home folder), and using that
  one without asking is the mistake this module exists to prevent.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from pgtasks.embedded import DEFAULT_ROOT, NO_DATABASE, EmbeddedPostgres, binaries
from pgtasks.errors import ConfigurationError, EmbeddedServerError
from pgtasks.migrations import migrate_url

ENV_URL = "PGTASKS_DATABASE_URL"
ENV_HOME = "PGTASKS_HOME"
#: A replica (hot standby) of the database, for what only reads: the dashboard's pages,
#: `pgtasks serve`'s GET endpoints and /metrics, the read-only CLI commands. Writes and
#: everything fenced (claims, leases, finishes) stay on PGTASKS_DATABASE_URL.
ENV_READ_URL = "PGTASKS_READ_DATABASE_URL"
#: Seconds of replica lag above which reads from the replica say how stale they are.
ENV_READ_LAG_THRESHOLD = "PGTASKS_READ_LAG_THRESHOLD"
#: Its default: a streaming replica under load replays within a second or so; five seconds
#: behind, an operator acting on a page (a retry, a cancel) may act on a state that is gone.
READ_LAG_THRESHOLD = 5.0
#: The embedded server's folder, looked for in the current folder and its parents.
FOLDER = DEFAULT_ROOT.name
#: What marks a project root, where the search for FOLDER ends.
PROJECT_MARKERS = ("pyproject.toml", ".git")

log = logging.getLogger("pgtasks.config")


def _search(start: Path) -> tuple[Path | None, Path]:
    """(the FOLDER found, or None; the last folder looked in)."""
    folder = start
    for folder in (start, *start.parents):
        if (folder / FOLDER).is_dir():
            return folder / FOLDER, folder
        if any((folder / marker).exists() for marker in PROJECT_MARKERS):
            break
    return None, folder


def find_embedded_root(start: Path | None = None) -> Path | None:
    """The folder of the existing embedded server pgtasks uses when no URL is set (see the
    module's docstring for the search), or None when there is none. Creates nothing."""
    home = os.environ.get(ENV_HOME)
    if home:
        path = Path(home).absolute()
        return path if path.is_dir() else None
    return _search((start or Path.cwd()).absolute())[0]


def embedded_root() -> Path:
    """Where `pgtasks db` commands work: the existing embedded server's folder, else where
    `pgtasks db start` creates one ($PGTASKS_HOME, else `.pgtasks` in the current folder)."""
    found = find_embedded_root()
    if found is not None:
        return found
    return Path(os.environ.get(ENV_HOME) or DEFAULT_ROOT).absolute()


def using_message(root: Path, *, created: bool = False) -> str:
    """The line that names the embedded server a command uses (or has just created)."""
    what = "created a new" if created else "using the"
    return f"{what} embedded PostgreSQL in {root} (set {ENV_URL} to use another server)"


def no_database_message() -> str:
    """Why no database can be used: no URL and no embedded server where pgtasks looks."""
    home = os.environ.get(ENV_HOME)
    if home:
        looked = f"{ENV_HOME}={Path(home).absolute()} does not exist"
    else:
        start = Path.cwd()
        last = _search(start)[1]
        looked = f"no {FOLDER} folder in {start}" + (
            "" if last == start else f" or its parents up to {last}"
        )
    try:
        binaries()
    except EmbeddedServerError as exc:
        return f"no database configured ({looked}); {exc}"
    return f"{NO_DATABASE} ({looked})"


def read_database_url(explicit: str | None = None) -> str | None:
    """The replica to read from: `explicit`, else $PGTASKS_READ_DATABASE_URL, else None
    (read from the primary, the database_url)."""
    return explicit or os.environ.get(ENV_READ_URL) or None


def read_lag_threshold(explicit: float | None = None) -> float:
    """The lag (seconds) above which a read from a replica says how stale it is:
    `explicit`, else $PGTASKS_READ_LAG_THRESHOLD, else READ_LAG_THRESHOLD."""
    if explicit is not None:
        return explicit
    text = os.environ.get(ENV_READ_LAG_THRESHOLD)
    if not text:
        return READ_LAG_THRESHOLD
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ConfigurationError(
            f"{ENV_READ_LAG_THRESHOLD}={text!r} is not a number of seconds >= 0"
        )
    return value


def _configured(explicit: str | None) -> str | None:
    return explicit or os.environ.get(ENV_URL) or None


def _embedded(announce: Callable[[str], None] | None) -> str:
    """Start (or attach to) the existing embedded server; ConfigurationError without one."""
    root = find_embedded_root()
    if root is None:
        raise ConfigurationError(no_database_message())
    url = EmbeddedPostgres(root).start(create=False)
    (announce or log.info)(using_message(root))
    return url


def database_url(
    explicit: str | None = None, *, announce: Callable[[str], None] | None = None
) -> str:
    """The DSN to use: `explicit`, else $PGTASKS_DATABASE_URL, else the existing embedded
    server, started if it is stopped. None of those: ConfigurationError, whose one line says
    to set the URL or run `pgtasks db start`.

    `announce` receives the line naming the embedded server when that is what is used
    (default: logged at INFO by the `pgtasks.config` logger). The embedded server is ours, so
    its schema is kept current too: no separate `pgtasks migrate` is needed.
    """
    url = _configured(explicit)
    if url:
        return url
    url = _embedded(announce)
    asyncio.run(migrate_url(url))
    return url


async def resolve_url(
    explicit: str | None = None, *, announce: Callable[[str], None] | None = None
) -> str:
    """`database_url` for code already inside an event loop."""
    url = _configured(explicit)
    if url:
        return url
    url = await asyncio.to_thread(_embedded, announce)
    await migrate_url(url)
    return url
