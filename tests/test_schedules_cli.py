"""`pgtasks schedules`: add, list, pause, resume, run, rm; one-line errors."""

from __future__ import annotations

import pytest

from pgtasks.cli import format_duration, parse_duration
from tests.test_cli import cli


@pytest.mark.slow
def test_add_list_pause_resume_run_rm(dsn):
    out = cli(dsn, "schedules", "add", "report", "report", "--cron", "0 6 * * *",
              "--tz", "Europe/Berlin", "--params", '{"kind": "daily"}')  # fmt: skip
    assert out.returncode == 0, out.stderr
    out = cli(dsn, "schedules", "add", "sync", "sync", "--every", "5m", "--overlap", "skip")
    assert out.returncode == 0, out.stderr
    ls = cli(dsn, "schedules")
    assert ls.returncode == 0, ls.stderr
    assert "report" in ls.stdout and "0 6 * * *" in ls.stdout and "Europe/Berlin" in ls.stdout
    assert "every 5m" in ls.stdout and "skip" in ls.stdout
    assert cli(dsn, "schedules", "pause", "sync").returncode == 0
    assert "paused" in cli(dsn, "schedules").stdout
    tid = cli(dsn, "schedules", "run", "sync")
    assert tid.returncode == 0 and tid.stdout.strip().isdigit()
    listing = cli(dsn, "schedules").stdout
    assert "PENDING" in listing, listing  # the last task's status
    assert cli(dsn, "status", tid.stdout.strip()).returncode == 0
    assert cli(dsn, "schedules", "resume", "sync").returncode == 0
    assert "paused" not in cli(dsn, "schedules").stdout
    assert cli(dsn, "schedules", "rm", "sync").returncode == 0
    assert "sync" not in cli(dsn, "schedules").stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("add", "s", "t", "--cron", "0 6 * *"), "cron expression has 5 fields"),
        (("add", "s", "t", "--cron", "0 6 * * *", "--tz", "Mars/Base"), "unknown time zone"),
        (("add", "s", "t", "--every", "0s"), "every must be a positive"),
        (("add", "s", "t", "--every", "soon"), "not a duration"),
        (("add", "s", "t"), "exactly one of --cron and --every"),
        (("add", "s", "t", "--every", "1m", "--params", "[1]"), "--params must be a JSON object"),
        (("rm", "nope"), "no schedule named 'nope'"),
        (("pause", "nope"), "no schedule named 'nope'"),
        (("run", "nope"), "no schedule named 'nope'"),
    ],
)
def test_errors_are_one_line(dsn, args, message):
    out = cli(dsn, "schedules", *args)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_parse_duration():
    assert parse_duration("30s").total_seconds() == 30
    assert parse_duration("1h30m").total_seconds() == 5400
    assert parse_duration("2d").total_seconds() == 172800
    assert parse_duration("90").total_seconds() == 90
    for text in ("30s", "5m", "1h30m", "2d", "1.5s", "0s"):
        assert format_duration(parse_duration(text)) == text


@pytest.mark.slow
async def test_misfire_grace_is_set_and_its_skips_listed(dsn, conn):
    out = cli(dsn, "schedules", "add", "remind", "remind", "--every", "10m",
              "--misfire-grace", "5m")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert await conn.fetchval("SELECT misfire_grace = interval '5 minutes' FROM pgtasks.schedules")
    # The next tick found 7 minutes late: skipped and counted.
    await conn.execute(
        "SELECT pgtasks.advance_clock(next_run_at + interval '7 minutes' - pgtasks.now())"
        " FROM pgtasks.schedule_defs"
    )
    assert await conn.fetchval("SELECT pgtasks.fire_every_schedules()") == 0
    ls = cli(dsn, "schedules")
    assert ls.returncode == 0, ls.stderr
    assert "grace 5m" in ls.stdout and "1 misfired" in ls.stdout, ls.stdout
    bad = cli(dsn, "schedules", "add", "x", "remind", "--every", "10m", "--misfire-grace", "1s")
    assert bad.returncode != 0 and "misfire_grace" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
