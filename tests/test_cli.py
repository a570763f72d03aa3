"""The CLI: one clear line and a non-zero exit for every mistake; tables for the rest."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import asyncpg
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # every test runs `pgtasks` processes


def cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGTASKS_DATABASE_URL": dsn, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "pgtasks.cli", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_submit_status_ls_cancel_retry(dsn):
    out = cli(
        dsn, "submit", "add", "--params", '{"a": 1, "b": 2}', "--queue", "math", "--priority", "4"
    )
    assert out.returncode == 0, out.stderr
    tid = out.stdout.strip()
    later = cli(dsn, "submit", "noop", "--in", "60").stdout.strip()
    ls = cli(dsn, "ls", "--queue", "math")
    assert ls.returncode == 0 and f"│ {tid} " in ls.stdout and "add" in ls.stdout
    assert later not in cli(dsn, "ls", "--queue", "math").stdout.split()
    st = cli(dsn, "status", tid)
    assert st.returncode == 0 and "PENDING" in st.stdout and "history" in st.stdout
    assert "was PENDING" in cli(dsn, "cancel", tid).stdout
    assert "PENDING again" in cli(dsn, "retry", tid).stdout
    stats = cli(dsn, "stats")
    assert stats.returncode == 0 and "math" in stats.stdout


def test_burst_runs_what_is_ready_and_leaves_a_task_due_tomorrow_waiting(dsn):
    now = cli(dsn, "submit", "noop").stdout.strip()
    tomorrow = cli(dsn, "submit", "noop", "--in", "86400").stdout.strip()
    run = cli(dsn, "worker", "--app", "tests.apps.basic", "--burst", "--poll-interval", "0.2")
    assert run.returncode == 0, run.stderr
    assert "DONE" in cli(dsn, "status", now).stdout
    assert "PENDING" in cli(dsn, "status", tomorrow).stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("submit", "x", "--params", "{oops"), "--params is not valid JSON"),
        (("submit", "x", "--params", "[1]"), "--params must be a JSON object"),
        (("submit", "x", "--max-retries", "-1"), "max_retries must be 0 or more"),
        (("submit", "", "--params", "{}"), "task_type must be a non-empty string"),
        (("status", "424242"), "task 424242 does not exist"),
        (("cancel", "424242"), "task 424242 does not exist"),
        (("ls", "--status", "nope"), "unknown status"),
        (("worker", "--app", "no_such_module_xyz"), "module not found"),
        (("worker", "--app", "missing.py"), "no such file"),
    ],
)
def test_errors_are_one_line_without_traceback(dsn, args, message):
    out = cli(dsn, *args)
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_unreachable_database_is_one_line(dsn):
    out = cli("postgresql://postgres@127.0.0.1:1/nope", "ls")
    assert out.returncode == 1
    assert out.stderr.startswith("error: cannot reach the database")
    assert len(out.stderr.strip().splitlines()) == 1


def test_help_explains_itself():
    out = subprocess.run(
        [sys.executable, "-m", "pgtasks.cli", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0
    for command in ("db", "migrate", "worker", "submit", "status", "ls", "cancel", "retry"):
        assert command in out.stdout


def test_types_lists_registered_types_with_their_effective_policy(dsn):
    assert "task types (0)" in cli(dsn, "types").stdout

    async def register() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "SELECT pgtasks.register_task_type('resize', queue => 'images', max_retries => 5)"
            )
        finally:
            await conn.close()

    asyncio.run(register())
    out = cli(dsn, "types")
    assert out.returncode == 0, out.stderr
    assert "resize" in out.stdout and "images" in out.stdout and "│ 5 " in out.stdout


def test_queues_pause_resume_set_and_keyed_submit(dsn):
    out = cli(dsn, "queues", "set", "imports", "--max-running", "2", "--rate", "10/s")
    assert out.returncode == 0 and "max_running 2" in out.stdout, out.stderr
    assert cli(dsn, "queues", "pause", "imports").returncode == 0
    first = cli(dsn, "submit", "t", "--queue", "imports", "--unique-key", "r:1",
                "--concurrency-key", "c:1", "--concurrency-limit", "2")  # fmt: skip
    again = cli(dsn, "submit", "t", "--queue", "imports", "--unique-key", "r:1")
    assert again.stdout.strip() == f"{first.stdout.strip()} (existing)", again.stderr
    table = cli(dsn, "queues").stdout
    assert "imports" in table and "True" in table and "10/s" not in table
    assert cli(dsn, "queues", "resume", "imports").returncode == 0


def test_submit_resent_with_its_idempotency_key_prints_the_first_id(dsn):
    first = cli(dsn, "submit", "noop", "--idempotency-key", "order-7", "--unique-for", "3600")
    again = cli(dsn, "submit", "noop", "--idempotency-key", "order-7", "--unique-for", "3600")
    assert first.returncode == again.returncode == 0, (first.stderr, again.stderr)
    assert first.stdout == again.stdout and first.stdout.strip().isdigit()
    clash = cli(dsn, "submit", "noop", "--idempotency-key", "k", "--unique-key", "k")
    assert clash.returncode != 0 and clash.stdout == ""
    assert clash.stderr.count("\n") == 1 and "not both" in clash.stderr, clash.stderr


def test_queues_counts_tasks_waiting_on_their_parents(dsn):
    async def submit() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            parent = await conn.fetchval("SELECT pgtasks.submit_task('t', queue => 'deps')")
            await conn.execute(
                "SELECT pgtasks.submit_task('t', queue => 'deps', depends_on => ARRAY[$1::bigint])",
                parent,
            )
        finally:
            await conn.close()

    asyncio.run(submit())
    out = cli(dsn, "queues")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    header = next(line for line in lines if "waiting" in line)
    row = next(line for line in lines if "deps" in line)
    cells = dict(zip(header.split("┃")[1:-1], row.split("│")[1:-1], strict=True))
    cells = {k.strip(): v.strip() for k, v in cells.items()}
    assert (cells["ready"], cells["waiting"]) == ("1", "1"), out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("queues", "set", "q", "--rate", "ten"), "--rate 'ten'"),
        (("queues", "set", "q", "--max-running", "-1"), "max_running must be"),
        (("queues", "pause", " "), "queue must be"),
        (("submit", "t", "--concurrency-limit", "2"), "concurrency_limit needs"),
    ],
)
def test_flow_control_errors_are_one_line(dsn, args, message):
    out = cli(dsn, *args)
    assert out.returncode != 0
    assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr, out.stderr
