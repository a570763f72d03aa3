"""Only `pgtasks db start` creates an embedded server; every other command finds it or says so.

A command run with no URL in a folder without a server used to start a fresh PostgreSQL
there, and the next command answered "task 1 does not exist" about tasks that were safe in
the real database. Now it fails with one line that says to set PGTASKS_DATABASE_URL or run
`pgtasks db start`, and writes nothing; a command run below a folder with a server (up to the
project root) uses that server and names it on stderr.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pgtasks import Client, Worker
from pgtasks.config import ENV_HOME, ENV_URL, find_embedded_root
from pgtasks.context import TaskContext
from pgtasks.errors import ConfigurationError
from pgtasks.registration import Registry
from pgtasks.task import task_register
from tests.conftest import ROOT

NO_DATABASE = (
    "error: no database configured; set PGTASKS_DATABASE_URL=postgresql://USER@HOST:PORT/DB, "
    "or create a private one with `pgtasks db start`"
)


def using(root: Path) -> str:
    return (
        f"pgtasks: using the embedded PostgreSQL in {root} "
        "(set PGTASKS_DATABASE_URL to use another server)"
    )


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (ENV_URL, ENV_HOME)}
    # The worker imports tests.apps.basic from a folder outside the repository.
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return {**env, **extra}


def pgtasks(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pgtasks.cli", *args],
        cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def tree(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*"))


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """An empty folder inside a project (its root holds pyproject.toml, which ends the search
    for `.pgtasks`, so nothing above the temporary folder can be found). Every embedded server
    started below it is stopped on the way out, by `pgtasks db stop` where it was started."""
    root = tmp_path / "project"
    (root / "app" / "sub" / "deeper").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'someone-elses-app'\n")
    yield root / "app"
    for pg in sorted(tmp_path.rglob(".pgtasks")):
        stop = pgtasks(pg.parent, "db", "stop")
        assert stop.returncode == 0, stop.stderr


# -- where pgtasks looks (no server is started) --------------------------------------------


def test_the_search_walks_up_to_the_project_root_and_no_further(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_HOME, raising=False)
    outer = tmp_path / "outer"
    src = outer / "proj" / "src" / "pkg"
    src.mkdir(parents=True)
    (outer / ".pgtasks").mkdir()
    # No project marker between src and outer: the nearest .pgtasks above is found.
    assert find_embedded_root(src) == outer / ".pgtasks"
    # A project root in between ends the search: outer's server is another project's.
    (outer / "proj" / "pyproject.toml").write_text("")
    assert find_embedded_root(src) is None
    (outer / "proj" / "pyproject.toml").unlink()
    (outer / "proj" / ".git").mkdir()
    assert find_embedded_root(src) is None
    # The project root's own .pgtasks is found, and the nearest one wins.
    (outer / "proj" / ".pgtasks").mkdir()
    assert find_embedded_root(src) == outer / "proj" / ".pgtasks"
    (src / ".pgtasks").mkdir()
    assert find_embedded_root(src) == src / ".pgtasks"
    # $PGTASKS_HOME names the folder outright: no search, and a missing one is none.
    monkeypatch.setenv(ENV_HOME, str(tmp_path / "elsewhere"))
    assert find_embedded_root(src) is None
    (tmp_path / "elsewhere").mkdir()
    assert find_embedded_root(src) == tmp_path / "elsewhere"


async def test_client_and_worker_without_a_database_raise_and_create_nothing(project, monkeypatch):
    monkeypatch.delenv(ENV_URL, raising=False)
    monkeypatch.delenv(ENV_HOME, raising=False)
    monkeypatch.chdir(project / "sub")
    before = tree(project.parent)
    with pytest.raises(ConfigurationError, match=re.escape(NO_DATABASE.removeprefix("error: "))):
        async with Client():
            pass
    reg = Registry()

    @task_register("explicit.noop", into=reg)
    async def noop(ctx: TaskContext, params: dict[str, Any]) -> None:
        return None

    with pytest.raises(ConfigurationError, match=re.escape(NO_DATABASE.removeprefix("error: "))):
        await Worker(registry=reg, burst=True).run()
    assert tree(project.parent) == before


# -- the CLI, in real processes -------------------------------------------------------------

# Every kind of command: they all fail the same way, before reaching for a server.
COMMANDS = [
    ["ls"], ["submit", "noop", "--params", "{}"], ["status", "1"], ["migrate"], ["stats"],
    ["schedules"], ["workflows"], ["worker", "--app", "tests.apps.basic", "--burst"],
    ["serve", "--port", "1"],
]  # fmt: skip


@pytest.mark.slow
def test_no_url_and_no_server_is_one_line_and_writes_nothing(project):
    before = tree(project.parent)
    for args in COMMANDS:
        r = pgtasks(project / "sub", *args)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert r.stderr.count("\n") == 1 and r.stderr.startswith(NO_DATABASE), (args, r.stderr)
        assert f"(no .pgtasks folder in {project / 'sub'} or its parents up to" in r.stderr
        assert "Traceback" not in r.stderr and not r.stdout, (args, r.stdout)
    # A PGTASKS_HOME that does not exist is no invitation to create it either.
    home = project / "home"
    r = pgtasks(project, "ls", PGTASKS_HOME=str(home))
    assert r.returncode == 1 and r.stderr.startswith(NO_DATABASE), r.stderr
    assert f"PGTASKS_HOME={home} does not exist" in r.stderr
    # Nor is a .pgtasks folder that holds no server (an interrupted start, a stray mkdir).
    (project / ".pgtasks").mkdir()
    r = pgtasks(project / "sub", "ls")
    assert r.returncode == 1 and r.stderr.startswith(NO_DATABASE), r.stderr
    assert f"({project / '.pgtasks'} holds no server yet)" in r.stderr
    (project / ".pgtasks").rmdir()
    # `db` commands that only look say there is none, and write nothing either.
    status = pgtasks(project, "db", "status")
    assert status.returncode == 3, status.stderr
    assert status.stdout.startswith(f"no embedded PostgreSQL in {project / '.pgtasks'}")
    assert pgtasks(project, "db", "stop").stdout == "not running\n"
    assert pgtasks(project, "db", "url").returncode == 1
    assert tree(project.parent) == before


@pytest.mark.slow
def test_after_db_start_commands_here_and_below_use_it_and_say_so(project, dsn):
    server = project / ".pgtasks"
    start = pgtasks(project, "db", "start")
    assert start.returncode == 0, start.stderr
    url = start.stdout.strip()
    assert start.stdout == f"{url}\n" and url.startswith("postgresql://postgres@127.0.0.1:")
    assert start.stderr == (
        f"pgtasks: created a new embedded PostgreSQL in {server} "
        "(set PGTASKS_DATABASE_URL to use another server)\n"
    )
    again = pgtasks(project, "db", "start")
    assert again.stdout == start.stdout and again.stderr == using(server) + "\n"

    sub = pgtasks(project, "submit", "noop", "--params", "{}")
    assert sub.returncode == 0, sub.stderr
    assert sub.stdout.strip().isdigit() and sub.stderr == using(server) + "\n"
    tid = sub.stdout.strip()

    # From a subfolder: the same server (it knows the task), and no second one.
    deeper = project / "sub" / "deeper"
    worker = pgtasks(deeper, "worker", "--app", "tests.apps.basic", "--burst")
    assert worker.returncode == 0, worker.stderr
    assert f"pgtasks.config: using the embedded PostgreSQL in {server}" in worker.stderr
    st = pgtasks(deeper, "status", tid)
    assert st.returncode == 0, st.stderr
    assert "DONE" in st.stdout and st.stderr == using(server) + "\n"
    assert [p for p in project.rglob(".pgtasks") if p != server] == []

    # Output for machines stays clean: `db url` prints the URL and nothing else.
    for where in (project, deeper):
        u = pgtasks(where, "db", "url")
        assert u.returncode == 0 and u.stdout == f"{url}\n" and not u.stderr, u

    # With a URL configured nothing is said about an embedded server: it is not used.
    other = pgtasks(deeper, "ls", PGTASKS_DATABASE_URL=dsn)
    assert other.returncode == 0 and not other.stderr, other.stderr
    assert f"│ {tid} " not in other.stdout  # the configured database, not the embedded one


@pytest.mark.slow
async def test_client_below_a_started_server_uses_it_and_logs_which(project, monkeypatch, caplog):
    start = pgtasks(project, "db", "start")
    assert start.returncode == 0, start.stderr
    monkeypatch.delenv(ENV_URL, raising=False)
    monkeypatch.delenv(ENV_HOME, raising=False)
    monkeypatch.chdir(project / "sub" / "deeper")
    with caplog.at_level(logging.INFO, logger="pgtasks.config"):
        async with Client() as client:
            tid = await client.submit("noop")
    said = [r.getMessage() for r in caplog.records if r.name == "pgtasks.config"]
    assert said == [using(project / ".pgtasks").removeprefix("pgtasks: ")]
    status = await asyncio.to_thread(pgtasks, project, "status", str(tid))
    assert status.returncode == 0 and "noop" in status.stdout, status.stderr
