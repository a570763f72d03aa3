"""Log in as each role, on each supported server.

The role boundary is what pgtasks promises, so these tests never use the superuser for the
attack: `login(role)` makes a LOGIN role that is a member of exactly that pgtasks role (or of
none, for `None`), and returns a connection as it. The superuser connection `conn` observes.

Each test runs on the session's embedded PostgreSQL and, when Debian's postgresql-15 is
installed (`.ci/run` installs it), on a PostgreSQL 15 server as well: 15 is the oldest
release whose defaults differ in ways that matter here (CREATE on schema public).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest

from pgtasks import db
from pgtasks.embedded import EmbeddedPostgres
from pgtasks.migrations import migrate_url

PG15 = Path("/usr/lib/postgresql/15/bin")
ROLES = ("pgtasks_submitter", "pgtasks_worker", "pgtasks_reader", "pgtasks_admin")

Login = Callable[..., Awaitable[asyncpg.Connection]]


@pytest.fixture(scope="session")
def pg15_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    if not (PG15 / "pg_ctl").exists():
        pytest.skip("Debian's postgresql-15 is not installed (apt-get install postgresql-15)")
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg15"), bin_dir=PG15)
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def pg15_template(pg15_server: EmbeddedPostgres) -> str:
    """A database on PostgreSQL 15 migrated once, that each test's database copies: a copy
    takes a fraction of a second, a migration a second or more per test. No session
    connects to it, so CREATE DATABASE ... TEMPLATE can read it."""
    name = "sec_template"

    async def make() -> None:
        admin = await asyncpg.connect(pg15_server.url())
        try:
            # A throwaway cluster, as the session's (tests/conftest.py): no fsync.
            await admin.execute("ALTER SYSTEM SET fsync = off")
            await admin.execute("SELECT pg_reload_conf()")
            await admin.execute(f"DROP DATABASE IF EXISTS {name}")
            await admin.execute(f"CREATE DATABASE {name}")
        finally:
            await admin.close()
        await migrate_url(pg15_server.url(name))

    # Requested from an async fixture, whose loop is running: migrate on a thread's own loop.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, make()).result()
    return name


@pytest.fixture(params=["embedded", "pg15"])
async def sec_dsn(request: pytest.FixtureRequest, dsn: str) -> AsyncIterator[str]:
    """A migrated, empty database on the embedded server or on PostgreSQL 15."""
    if request.param == "embedded":
        yield dsn
        return
    server: EmbeddedPostgres = request.getfixturevalue("pg15_server")
    template: str = request.getfixturevalue("pg15_template")
    admin = await asyncpg.connect(server.url())
    name = f"sec_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    try:
        yield server.url(name)
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


@pytest.fixture
async def su(sec_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """The superuser, who observes (and plays the victim where a test needs one)."""
    c = await db.connect(sec_dsn)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def login(sec_dsn: str, su: asyncpg.Connection) -> AsyncIterator[Login]:
    """`await login("pgtasks_worker")`: a connection as a fresh LOGIN role that is a member
    of that role only; `await login(None)`: a role with no pgtasks grant at all. The
    connection does not pin its search_path: an attacker chooses its own."""
    made: list[str] = []
    conns: list[asyncpg.Connection] = []

    async def make(role: str | None, *, create_on_public: bool = False) -> asyncpg.Connection:
        name = f"att_{(role or 'nobody').removeprefix('pgtasks_')}_{uuid.uuid4().hex[:6]}"
        await su.execute(f"CREATE ROLE {name} LOGIN")
        made.append(name)
        if role is not None:
            await su.execute(f"GRANT {role} TO {name}")
        if create_on_public:
            # PostgreSQL 14 and older grant this to every role by default.
            await su.execute(f"GRANT CREATE ON SCHEMA public TO {name}")
        c = await asyncpg.connect(sec_dsn.replace("postgres@", f"{name}@", 1))
        conns.append(c)
        return c

    try:
        yield make
    finally:
        for c in conns:
            await c.close()
        for name in made:
            await su.execute(f"DROP OWNED BY {name}; DROP ROLE {name}")


async def wait_until(cond: Callable[[], Awaitable[bool]], timeout: float = 30) -> None:
    """Wait for an observable condition. The timeout only bounds a hung test."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await cond():
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)
