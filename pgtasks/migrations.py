"""Builds and upgrades the pgtasks schema.

Two ways lead to the same catalog (tests/test_catalog.py compares them object by object):

- a database without pgtasks runs the topic files in sql/schema/, in name order, in one
  transaction: the current definition of everything, written once, in reading order. Every
  numbered migration is then recorded as applied;
- a database with pgtasks runs the numbered files in sql/ that it has not recorded yet, each
  in its own transaction with its ledger row: each one is a delta from the version before.
  A file whose first line is `-- pgtasks: no-transaction` runs statement by statement
  instead (CREATE INDEX CONCURRENTLY, VALIDATE CONSTRAINT), its ledger row written last.

Upgrades happen while workers drain, so no delta may queue behind a long transaction:
PostgreSQL grants locks in arrival order, and an ALTER waiting for its ACCESS EXCLUSIVE
lock makes every claim that arrives after it wait too. Each delta therefore runs with a
short lock_timeout (LockPolicy, 2 s unless configured); a delta whose lock is not granted in
time is rolled back and tried again after a pause, during which the queue flows, and after
its last attempt the error names the session that blocked it.

Two processes migrating at once serialise, so the second finds the work done. On a database
with pgtasks each delta first locks the ledger table (_Ledger), which only its owner (the
migrator) may lock: an advisory lock is open to every role, and any role holding the key
first could stall every upgrade. Only a first install, with nothing of pgtasks to protect
yet, serialises on an advisory lock. Either wait is bounded (MigrationBlocked, naming the
session that holds the lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from pgtasks.db import server_settings
from pgtasks.errors import ConfigurationError, PgTasksError

# Any constant works; it only has to be the same for every pgtasks process. Taken only for a
# first install (see the module's docstring).
MIGRATION_LOCK = 0x7067_7461_736B  # "pgtask"

# How long a migrator waits for another one (or whoever holds the lock) before
# MigrationBlocked: a delta of the other's may build an index concurrently for a while.
MIGRATION_LOCK_WAIT = 60.0

# The ledger lock of an upgrade: SHARE UPDATE EXCLUSIVE conflicts with itself but not with
# the INSERT that records a delta (ROW EXCLUSIVE) or with reading the ledger. Only a role
# with UPDATE, DELETE or TRUNCATE on the ledger (its owner, the migrator) may take it.
_LEDGER_LOCK = "LOCK TABLE pgtasks.migrations IN SHARE UPDATE EXCLUSIVE MODE"

# Who holds a lock we gave up waiting for (the wait is over, so pg_blocking_pids says
# nothing any more): the ledger table's conflicting lock, or the advisory key.
_HOLDER = """
SELECT a.pid, a.usename, a.application_name, a.state,
       extract(epoch FROM clock_timestamp() - a.xact_start)::int AS xact_secs,
       left(regexp_replace(a.query, '\\s+', ' ', 'g'), 120) AS query
  FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
 WHERE l.granted AND l.pid <> pg_catalog.pg_backend_pid()
   AND ((l.locktype = 'relation' AND l.relation = pg_catalog.to_regclass('pgtasks.migrations')
         AND l.mode IN ('ShareUpdateExclusiveLock', 'ShareLock', 'ShareRowExclusiveLock',
                        'ExclusiveLock', 'AccessExclusiveLock'))
        OR (l.locktype = 'advisory' AND l.objsubid = 1
            AND ((l.classid::int8 << 32) | l.objid::int8) = $1))
 ORDER BY a.xact_start NULLS LAST
 LIMIT 1
"""

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

# Releases up to 0.1.0 recorded a checksum of each file's bytes. These files have had
# comments corrected since; the byte checksum each had in 0.1.0 stays valid for them, so a
# database installed then keeps upgrading.
RELEASED_BYTE_CHECKSUMS: dict[int, str] = {
    3: "288aa60d6d616438844d29da3dcb604077ca9f65ceab7cc5c13f829cc1359632",
    4: "de931139f559cb704e1b289a598f86110f66fb5937e503e719df6ecc223cd7f4",
    5: "b001203f077ad2080a3da196739adf06a9bacc9b5409e8aabbd5f5aa4caac1fe",
    6: "723a7fa5ff1745cd35835c480407bb4206208324159853d9063a56d7d52ee606",
    7: "07829d30605fb1874b12d5e02b8b17db46c0cd6c8a5f6723b589fb4f3a5f7f4e",
    8: "a01350740bd2792c3a1601a36697ce474f3610b1e90792390301dd8d11dac8e8",
}

# The ledger belongs to the migrator, not to the schema's owner: it records what ran.
_LEDGER = """
CREATE TABLE IF NOT EXISTS pgtasks.migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text,
    applied_at timestamptz NOT NULL DEFAULT now())
"""

# SQL text without comments and with each run of whitespace made one space: what a checksum
# covers. Quoted strings and identifiers are kept whole, so a change inside one still counts.
_TOKENS = re.compile(
    r"""(?P<keep>'(?:[^']|'')*'|"(?:[^"]|"")*")"""
    r"""|(?P<drop>--[^\n]*|/\*.*?\*/)"""
    r"""|(?P<space>\s+)""",
    re.DOTALL,
)


def significant_text(sql: str) -> str:
    """The statements of a file as the server sees them, minus comments and layout."""

    def piece(m: re.Match[str]) -> str:
        if m.group("keep") is not None:
            return m.group("keep")
        return " "

    return re.sub(r" +", " ", _TOKENS.sub(piece, sql)).strip()


# What a statement splitter must step over whole: quoted strings and identifiers,
# dollar-quoted bodies and comments (a ';' inside any of them ends nothing).
_LEXEMES = re.compile(
    r"""'(?:[^']|'')*'|"(?:[^"]|"")*\""""
    r"""|(?P<dollar>\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$).*?(?P=dollar)"""
    r"""|--[^\n]*|/\*.*?\*/|(?P<end>;)""",
    re.DOTALL,
)


def statements(sql: str) -> list[str]:
    """The statements of a file, each without its ';', comment-only pieces left out."""
    out: list[str] = []
    start = 0
    for m in _LEXEMES.finditer(sql):
        if m.group("end") is not None:
            out.append(sql[start : m.start()])
            start = m.end()
    out.append(sql[start:])
    return [s.strip() for s in out if significant_text(s)]


# The first line of a delta that must run outside a transaction block.
NO_TRANSACTION = "-- pgtasks: no-transaction"

# The statements a no-transaction delta may hold: each one can run again after a failure
# anywhere in the file, because the statements before it have committed and a rerun starts
# from the top. Anything else belongs in an ordinary (transactional) delta.
_RERUNNABLE = (
    re.compile(r"^CREATE (UNIQUE )?INDEX CONCURRENTLY IF NOT EXISTS ", re.I),
    re.compile(r"^DROP INDEX CONCURRENTLY IF EXISTS ", re.I),
    re.compile(r"^ALTER TABLE (IF EXISTS )?(ONLY )?[\w.\"]+ VALIDATE CONSTRAINT [\w\"]+$", re.I),
)
_CONCURRENT_INDEX = re.compile(
    r"^CREATE (?:UNIQUE )?INDEX CONCURRENTLY IF NOT EXISTS (?P<index>[\w\"]+) "
    r"ON (?:ONLY )?(?P<table>[\w.\"]+)",
    re.I,
)


@dataclass(frozen=True)
class Migration:
    """One numbered delta file of sql/."""

    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text()

    @property
    def no_transaction(self) -> bool:
        """Marked to run statement by statement (see CONTRIBUTING.md, "Deltas that cannot
        run in a transaction")."""
        first = self.sql.split("\n", 1)[0]
        return first.strip() == NO_TRANSACTION

    @property
    def checksum(self) -> str:
        """Covers what the file does, not how it is commented or laid out: correcting a
        comment in an applied migration is no reason to refuse the database. The
        no-transaction marker is a comment that changes what the file does, so it counts."""
        text = significant_text(self.sql)
        if self.no_transaction:
            text = NO_TRANSACTION + "\n" + text
        return "sql:" + hashlib.sha256(text.encode()).hexdigest()

    @property
    def byte_checksum(self) -> str:
        """The checksum releases before comment-insensitive checksums recorded."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def rerunnable_statements(self) -> list[str]:
        """The statements of a no-transaction file, refused whole if one of them could not
        safely run twice."""
        found = statements(self.sql)
        for n, stmt in enumerate(found, 1):
            text = significant_text(stmt)
            if not any(rule.match(text) for rule in _RERUNNABLE):
                raise ConfigurationError(
                    f"migration {self.path.name} runs without a transaction, but its statement "
                    f"{n} ({text[:60]}) is not one that can run again after a failure: a "
                    "no-transaction delta holds only CREATE INDEX CONCURRENTLY IF NOT EXISTS, "
                    "DROP INDEX CONCURRENTLY IF EXISTS and ALTER TABLE ... VALIDATE CONSTRAINT; "
                    "put the rest in an ordinary delta before it"
                )
        return found


def sql_dir() -> Path:
    """Inside a wheel the files sit at pgtasks/sql; in a checkout at ../sql."""
    here = Path(__file__).parent
    for candidate in (here / "sql", here.parent / "sql"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("pgtasks: cannot find the sql/ folder")


def available() -> list[Migration]:
    """The numbered delta files, in order."""
    found = []
    for path in sorted(sql_dir().glob("*.sql")):
        m = _NAME.match(path.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), path))
    return found


def topic_files() -> list[Path]:
    """The current schema, one file per topic, in reading (and running) order."""
    return sorted((sql_dir() / "schema").glob("*.sql"))


# -- waiting for locks ------------------------------------------------------------------


@dataclass(frozen=True)
class LockPolicy:
    """How long a delta may wait for one lock, and how often it is tried.

    `timeout` bounds what a claim queued behind the migration can wait for it: the worst a
    worker sees is one timeout per attempt, with the queue flowing in between. `attempts`
    bounds the whole wait (the defaults give up after about a minute); the pause after
    attempt n is `backoff * 2**(n-1)` seconds, at most `max_backoff`.
    """

    timeout: float = 2.0
    attempts: int = 10
    backoff: float = 0.5
    max_backoff: float = 10.0

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ConfigurationError(f"lock timeout {self.timeout!r}: must be above 0 seconds")
        if self.attempts < 1:
            raise ConfigurationError(f"lock attempts {self.attempts!r}: must be at least 1")

    @property
    def setting(self) -> str:
        """The lock_timeout value, in whole milliseconds (at least 1)."""
        return f"{max(1, round(self.timeout * 1000))}ms"

    def pause(self, attempt: int) -> float:
        return float(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))


class MigrationBlocked(PgTasksError):
    """A delta could not take its locks within LockPolicy.attempts tries; nothing of it (of
    a no-transaction delta: nothing from the statement that waited on) was applied."""

    def __init__(self, message: str, *, blocker_pid: int | None) -> None:
        super().__init__(message)
        self.blocker_pid = blocker_pid


# The session at the head of what blocks `pid`: pg_blocking_pids also lists the sessions
# queued ahead of it, so the oldest transaction among them is named (it is the one holding
# the lock everyone waits for). The watcher never names itself.
_BLOCKER = """
SELECT b.pid, b.usename, b.application_name, b.state,
       extract(epoch FROM clock_timestamp() - b.xact_start)::int AS xact_secs,
       left(regexp_replace(b.query, '\\s+', ' ', 'g'), 120) AS query
  FROM pg_catalog.pg_stat_activity b
 WHERE b.pid = ANY (pg_catalog.pg_blocking_pids($1)) AND b.pid <> pg_catalog.pg_backend_pid()
 ORDER BY b.xact_start NULLS LAST
 LIMIT 1
"""


def _describe(row: asyncpg.Record) -> str:
    parts = [f"pid {row['pid']}"]
    if row["usename"]:
        parts.append(f"user {row['usename']}")
    if row["application_name"]:
        parts.append(f"application {row['application_name']!r}")
    if row["state"]:
        age = f", transaction open {row['xact_secs']}s" if row["xact_secs"] is not None else ""
        parts.append(f"{row['state']}{age}")
    if row["query"]:
        parts.append(f"last query: {row['query']}")
    return ", ".join(parts)


class _Watcher:
    """A second session that samples who blocks the migrating one while a delta runs: once
    the lock wait has timed out the blocked session sees nothing, so the name has to be
    taken during the wait."""

    def __init__(self, connect: Callable[[], Awaitable[asyncpg.Connection]] | None) -> None:
        self._connect = connect
        self._conn: asyncpg.Connection | None = None

    @contextlib.asynccontextmanager
    async def watching(self, pid: int, interval: float) -> AsyncIterator[list[asyncpg.Record]]:
        """Yields a list that holds the latest blocker seen, if any, when the block ends."""
        seen: list[asyncpg.Record] = []
        if self._conn is None and self._connect is not None:
            try:
                self._conn = await self._connect()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                self._connect = None  # no session to spare: the error names no blocker
        if self._conn is None:
            yield seen
            return
        conn = self._conn

        async def sample() -> None:
            # Best effort: a watcher that lost its session leaves the blocker unnamed.
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                while True:
                    row = await conn.fetchrow(_BLOCKER, pid)
                    if row is not None:
                        seen[:] = [row]
                    await asyncio.sleep(interval)

        task = asyncio.create_task(sample())
        try:
            yield seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()


# A lock not granted within lock_timeout (55P03), or this connection chosen as a deadlock's
# victim (40P01, e.g. between a delta and a worker that lock two tables in opposite orders):
# both leave nothing behind once the transaction is rolled back, so trying again is safe.
_LOCK_WAITS = (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError)


async def _retrying(
    conn: asyncpg.Connection,
    what: str,
    attempt: Callable[[], Awaitable[None]],
    *,
    locks: LockPolicy,
    watcher: _Watcher,
    report: Callable[[str], None] | None,
    applied_note: str = "nothing of it was applied",
) -> None:
    """Run `attempt` until it is not stopped by a lock wait, at most locks.attempts times."""
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    interval = min(0.25, locks.timeout / 4)
    for n in range(1, locks.attempts + 1):
        async with watcher.watching(pid, interval) as seen:
            try:
                await attempt()
                return
            except _LOCK_WAITS as exc:
                cause = (
                    f"waited {locks.timeout:g}s for a lock"
                    if isinstance(exc, asyncpg.LockNotAvailableError)
                    else "was chosen as a deadlock's victim"
                )
        blocker = f"blocked by {_describe(seen[0])}" if seen else "blocker not seen"
        if n == locks.attempts:
            pid_hint = (
                f" (SELECT pg_terminate_backend({seen[0]['pid']}))" if seen else " (pg_locks)"
            )
            raise MigrationBlocked(
                f"{what} gave up after {n} attempts: the last {cause} ({blocker}); "
                f"{applied_note}. End that session or wait for it{pid_hint}, then run "
                "pgtasks migrate again",
                blocker_pid=seen[0]["pid"] if seen else None,
            )
        pause = locks.pause(n)
        if report is not None:
            report(
                f"{what}: attempt {n} of {locks.attempts} {cause} ({blocker}); rolled back, "
                f"trying again in {pause:g}s"
            )
        await asyncio.sleep(pause)


# -- applying ---------------------------------------------------------------------------


async def applied(conn: asyncpg.Connection) -> dict[int, str | None]:
    """Applied versions and the checksum each file had then."""
    exists = await conn.fetchval("SELECT to_regclass('pgtasks.migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, checksum FROM pgtasks.migrations")
    return {r["version"]: r["checksum"] for r in rows}


async def _record(conn: asyncpg.Connection, migs: list[Migration]) -> None:
    await conn.execute(_LEDGER)
    await conn.executemany(
        "INSERT INTO pgtasks.migrations (version, name, checksum) VALUES ($1, $2, $3)",
        [(m.version, m.name, m.checksum) for m in migs],
    )


async def install(conn: asyncpg.Connection) -> list[Migration]:
    """Build the schema from the topic files and record every migration as applied.

    Function bodies are checked when they first run rather than when created
    (check_function_bodies off, as pg_dump restores do), so a topic file may call a
    function that a later one defines. No lock_timeout: nothing uses a schema that does
    not exist yet, so nothing can be kept waiting.
    """
    migs = available()
    async with conn.transaction():
        await conn.execute("SET LOCAL check_function_bodies = off")
        for path in topic_files():
            await conn.execute(path.read_text())
        await conn.execute("RESET ROLE")
        await _record(conn, migs)
    return migs


async def _apply_in_transaction(
    conn: asyncpg.Connection,
    mig: Migration,
    locks: LockPolicy,
    watcher: _Watcher,
    report: Callable[[str], None] | None,
    ledger: _Ledger,
) -> bool:
    """The whole file and its ledger row in one transaction, tried again from the start
    when a lock is not granted in time. A file may SET LOCAL a lock_timeout of its own."""

    ran = False

    async def attempt() -> None:
        nonlocal ran
        async with conn.transaction():
            if not await ledger.in_transaction(conn, mig):
                return
            await conn.execute("SELECT set_config('lock_timeout', $1, true)", locks.setting)
            await conn.execute(mig.sql)
            await conn.execute("RESET ROLE")
            await _record(conn, [mig])
            ran = True

    await _retrying(conn, mig.path.name, attempt, locks=locks, watcher=watcher, report=report)
    return ran


async def _drop_invalid_leftover(conn: asyncpg.Connection, stmt: str) -> None:
    """A CREATE INDEX CONCURRENTLY that failed (a lock timeout, a duplicate key, a killed
    session) leaves its index behind, INVALID: never used by queries, still maintained by
    every write, and skipped by IF NOT EXISTS. Drop it so the statement builds it anew."""
    m = _CONCURRENT_INDEX.match(significant_text(stmt))
    if m is None:
        return
    leftover = await conn.fetchval(
        """SELECT format('%I.%I', n.nspname, c.relname)
             FROM pg_index i
             JOIN pg_class c ON c.oid = i.indexrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE i.indrelid = to_regclass($1) AND c.relname = $2 AND NOT i.indisvalid""",
        m.group("table"),
        m.group("index").strip('"'),
    )
    if leftover is not None:
        await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {leftover}")


def _applied_before(n: int) -> str:
    if n == 1:
        return "nothing of it was applied"
    done = "statement 1 was" if n == 2 else f"statements 1 to {n - 1} were"
    return f"{done} applied, and the next run repeats or skips them harmlessly"


async def _apply_statement_by_statement(
    conn: asyncpg.Connection,
    mig: Migration,
    locks: LockPolicy,
    watcher: _Watcher,
    report: Callable[[str], None] | None,
    ledger: _Ledger,
) -> bool:
    """Each statement on its own (autocommit), the ledger row last. A statement stopped by
    a lock wait is tried again on its own; any other failure leaves the statements before it
    applied and the ledger without the file, so the next run starts it from the top."""
    stmts = mig.rerunnable_statements()
    if not await ledger.aside_for(conn, mig):
        return False
    before = await conn.fetchval("SELECT current_setting('lock_timeout')")
    await conn.execute("SELECT set_config('lock_timeout', $1, false)", locks.setting)
    try:
        for n, stmt in enumerate(stmts, 1):

            async def attempt(stmt: str = stmt) -> None:
                await _drop_invalid_leftover(conn, stmt)
                await conn.execute(stmt)

            await _retrying(
                conn,
                f"{mig.path.name} statement {n}",
                attempt,
                locks=locks,
                watcher=watcher,
                report=report,
                applied_note=_applied_before(n),
            )
        async with conn.transaction():
            await _record(conn, [mig])
    finally:
        await conn.execute("SELECT set_config('lock_timeout', $1, false)", before)
        await ledger.release()
    return True


async def _blocked(conn: asyncpg.Connection, what: str, wait: float) -> MigrationBlocked:
    row = await conn.fetchrow(_HOLDER, MIGRATION_LOCK)
    holder = _describe(row) if row is not None else "its holder has gone since"
    return MigrationBlocked(
        f"pgtasks migrate: {what} held by another session for over {wait:g}s ({holder}); "
        "nothing was applied. If that is another pgtasks migrate, wait for it; otherwise "
        "end that session and run again.",
        blocker_pid=row["pid"] if row is not None else None,
    )


async def _take_advisory_lock(conn: asyncpg.Connection, wait: float) -> None:
    """The first install's lock, asked for again every 100 ms rather than waited for: a
    session blocked in pg_advisory_lock holds a snapshot, and CREATE INDEX CONCURRENTLY
    waits for every older snapshot to end, so a second migrator waiting there while the
    first builds an index concurrently would be a deadlock."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + wait
    while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK):
        if loop.time() > give_up:
            raise await _blocked(conn, "the first-install lock (an advisory lock)", wait)
        await asyncio.sleep(0.1)


async def _ledger_exists(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass('pgtasks.migrations') IS NOT NULL"))


class _Ledger:
    """The upgrade's lock: the ledger table, locked by each delta before it runs, and the
    delta then run only if the ledger does not list it yet (another migrator may have run it
    meanwhile). Asked for every 100 ms (NOWAIT) up to `wait`, never waited for: a session
    waiting in LOCK TABLE holds the catalog snapshot of its name lookup, which the other
    migrator's CREATE INDEX CONCURRENTLY would wait for, a deadlock. Granted, the lock holds
    no snapshot, so it delays no concurrent index build."""

    def __init__(self, wait: float, connect: Callable[[], Awaitable[asyncpg.Connection]] | None):
        self.wait = wait
        self.connect = connect
        self.aside: asyncpg.Connection | None = None

    async def _poll(self, conn: asyncpg.Connection, lock: Callable[[], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.wait
        while True:
            try:
                await lock()
                return
            except asyncpg.LockNotAvailableError:
                if loop.time() > give_up:
                    raise await _blocked(
                        conn, "the ledger pgtasks.migrations is", self.wait
                    ) from None
            await asyncio.sleep(0.1)

    @staticmethod
    async def _to_do(conn: asyncpg.Connection, mig: Migration) -> bool:
        return not await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pgtasks.migrations WHERE version = $1)", mig.version
        )

    async def in_transaction(self, conn: asyncpg.Connection, mig: Migration) -> bool:
        """For an ordinary delta: the lock in its own transaction (a savepoint per try).
        Before the ledger exists the advisory lock serialises (see migrate)."""
        if not await _ledger_exists(conn):
            return True

        async def lock() -> None:
            async with conn.transaction():
                await conn.execute(_LEDGER_LOCK + " NOWAIT")

        await self._poll(conn, lock)
        return await self._to_do(conn, mig)

    async def aside_for(self, conn: asyncpg.Connection, mig: Migration) -> bool:
        """For a no-transaction delta: the lock held by a second session, idle in its
        transaction, until release(). Without a second session (a caller of migrate()
        without `connect`) the advisory lock alone serialises."""
        if self.connect is None or not await _ledger_exists(conn):
            return True
        if self.aside is None:
            self.aside = await self.connect()
        aside = self.aside

        async def lock() -> None:
            await aside.execute("BEGIN")
            try:
                await aside.execute(_LEDGER_LOCK + " NOWAIT")
            except BaseException:
                await aside.execute("ROLLBACK")
                raise

        await self._poll(aside, lock)
        # Asked on the migrating session: the one aside sends only simple-protocol
        # statements (a finished extended-protocol query keeps its snapshot there until the
        # next one, and the concurrent build would wait for it).
        if await self._to_do(conn, mig):
            return True
        await self.release()
        return False

    async def release(self) -> None:
        if self.aside is not None and self.aside.is_in_transaction():
            await self.aside.execute("ROLLBACK")

    async def close(self) -> None:
        if self.aside is not None:
            await self.aside.close()


async def migrate(
    conn: asyncpg.Connection,
    *,
    up_to: int | None = None,
    fresh: bool | None = None,
    locks: LockPolicy | None = None,
    report: Callable[[str], None] | None = None,
    connect: Callable[[], Awaitable[asyncpg.Connection]] | None = None,
    lock_wait: float = MIGRATION_LOCK_WAIT,
) -> list[Migration]:
    """Bring the schema up to date and return the migrations this call applied.

    A database without pgtasks is built from the topic files; one with pgtasks gets the
    numbered deltas it lacks. `up_to` (upgrade tests) stops the deltas at that version and
    always builds through them; `fresh=False` does the same for the whole list.

    Each delta waits at most `locks.timeout` for any lock and is tried `locks.attempts`
    times (MigrationBlocked after the last); `report` hears of each retry. `connect` opens
    the second session that names a blocker (migrate_url passes one) and holds the ledger
    lock. `lock_wait` bounds the wait for another migrator (MigrationBlocked after it).

    A file whose statements changed after it was applied is an error, not something to
    skip: the database would silently lack what the new file says.
    """
    locks = locks or LockPolicy()
    watcher = _Watcher(connect)
    done: list[Migration] = []
    ledger = _Ledger(lock_wait, connect)
    advisory = False
    try:
        if connect is None or not await _ledger_exists(conn):
            # A first install (nothing to protect yet), or a caller without a second
            # session for the no-transaction deltas.
            await _take_advisory_lock(conn, lock_wait)
            advisory = True
        have = await applied(conn)
        new_db = not have and not await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'pgtasks')"
        )
        if fresh is None:
            fresh = new_db and up_to is None
        if fresh:
            if not new_db:
                raise ConfigurationError(
                    "pgtasks: a fresh install needs a database without the pgtasks schema"
                )
            return await install(conn)
        for mig in available():
            if up_to is not None and mig.version > up_to:
                break
            if mig.version in have:
                accepted = (None, mig.checksum, mig.byte_checksum)
                if have[mig.version] not in (*accepted, RELEASED_BYTE_CHECKSUMS.get(mig.version)):
                    raise ConfigurationError(
                        f"migration {mig.path.name} changed after it was applied to this "
                        "database; migrations are append-only, so add a new numbered file. "
                        "(A throwaway embedded database: `pgtasks db stop && rm -rf .pgtasks`.)"
                    )
                continue
            apply = _apply_statement_by_statement if mig.no_transaction else _apply_in_transaction
            if await apply(conn, mig, locks, watcher, report, ledger):
                done.append(mig)
    finally:
        await watcher.close()
        await ledger.close()
        if advisory:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return done


async def migrate_url(
    url: str,
    *,
    up_to: int | None = None,
    fresh: bool | None = None,
    locks: LockPolicy | None = None,
    report: Callable[[str], None] | None = None,
    lock_wait: float = MIGRATION_LOCK_WAIT,
) -> list[Migration]:
    """`migrate` on a connection of its own, its search_path pinned like every other: a view,
    constraint or index expression is stored as it resolves when created, so an operator
    planted in `public` must never be in reach while the schema is built."""

    async def connect(name: str = "pgtasks migrate") -> asyncpg.Connection:
        return await asyncpg.connect(url, server_settings=server_settings(name))

    conn = await connect()
    try:
        return await migrate(
            conn,
            up_to=up_to,
            fresh=fresh,
            locks=locks,
            report=report,
            connect=lambda: connect("pgtasks migrate (lock watcher)"),
            lock_wait=lock_wait,
        )
    finally:
        await conn.close()
