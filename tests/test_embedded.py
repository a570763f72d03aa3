"""The embedded server: starts from nothing (as root too), is reused, stops, restarts."""

from __future__ import annotations

import os
import subprocess
import sys

import asyncpg
import pytest

from pgtasks.embedded import EmbeddedPostgres
from pgtasks.errors import EmbeddedServerError
from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # each test starts a PostgreSQL of its own


@pytest.fixture
def pg(tmp_path):
    server = EmbeddedPostgres(tmp_path / "pg")
    yield server
    server.destroy()


async def test_start_reuse_stop_restart(pg, tmp_path):
    assert not pg.status().running
    with pytest.raises(EmbeddedServerError, match="pgtasks db start"):
        pg.url()
    url = pg.start()
    assert url.startswith("postgresql://postgres@127.0.0.1:")
    st = pg.status()
    assert st.running and st.pid
    # a second handle (another process would do the same) reuses the running server
    assert EmbeddedPostgres(tmp_path / "pg").start() == url
    conn = await asyncpg.connect(url)
    assert await conn.fetchval("SELECT 1") == 1
    await conn.close()
    first_pid = st.pid
    assert pg.restart() == url  # same port after a restart
    assert pg.status().pid != first_pid
    assert pg.stop() is True
    assert pg.stop() is False
    assert not pg.status().running


def test_does_not_change_permissions_outside_its_folder(pg, tmp_path):
    before = {p: p.stat().st_mode for p in [tmp_path, *tmp_path.parents][:4]}
    pg.start()
    after = {p: p.stat().st_mode for p in before}
    assert before == after


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pgtasks.cli", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_cli_db_commands_and_auto_migrate(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PGTASKS_DATABASE_URL"}
    env["PGTASKS_HOME"] = str(tmp_path / "home")
    try:
        st = _cli("db", "status", env=env)
        assert st.returncode == 3 and "stopped" in st.stdout
        url = _cli("db", "start", env=env).stdout.strip()
        assert url.startswith("postgresql://")
        assert _cli("db", "url", env=env).stdout.strip() == url
        # with no URL configured, commands use the embedded server and migrate it first
        sub = _cli("submit", "noop", "--params", '{"x": 1}', env=env)
        assert sub.returncode == 0, sub.stderr
        assert sub.stdout.strip().isdigit()
        assert "schema is up to date" in _cli("migrate", env=env).stdout
        assert "running" in _cli("db", "status", env=env).stdout
    finally:
        assert _cli("db", "stop", env=env).stdout.strip() == "stopped"
