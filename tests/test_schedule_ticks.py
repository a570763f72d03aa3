"""Cron ticks in time zones (pgtasks.schedules): table-driven, no database.

Ticks follow the schedule's wall clock; a wall time skipped by spring-forward runs at the
first valid instant after the gap, one repeated by fall-back runs once (the first)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import islice

import pytest

from pgtasks import Registry, task_register
from pgtasks.errors import PgTasksError
from pgtasks.schedules import cron_ticks, due_ticks, next_tick, schedule


def utc(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=UTC)


# (cron, zone, after (UTC), the next ticks (UTC))
CASES = [
    # Berlin, spring forward 2026-03-29 02:00 CET -> 03:00 CEST (01:00 UTC).
    ("30 2 * * *", "Europe/Berlin", "2026-03-27 12:00",
     ["2026-03-28 01:30", "2026-03-29 01:00", "2026-03-30 00:30"]),
    ("0 6 * * *", "Europe/Berlin", "2026-03-28 12:00", ["2026-03-29 04:00", "2026-03-30 04:00"]),
    ("*/30 * * * *", "Europe/Berlin", "2026-03-29 00:00",
     ["2026-03-29 00:30", "2026-03-29 01:00", "2026-03-29 01:30", "2026-03-29 02:00"]),
    # Berlin, fall back 2026-10-25 03:00 CEST -> 02:00 CET (01:00 UTC): 02:30 happens twice.
    ("30 2 * * *", "Europe/Berlin", "2026-10-24 12:00",
     ["2026-10-25 00:30", "2026-10-26 01:30", "2026-10-27 01:30"]),
    ("0 6 * * *", "Europe/Berlin", "2026-10-24 12:00", ["2026-10-25 05:00", "2026-10-26 05:00"]),
    ("*/30 * * * *", "Europe/Berlin", "2026-10-24 23:59",
     ["2026-10-25 00:00", "2026-10-25 00:30", "2026-10-25 02:00", "2026-10-25 02:30"]),
    # Month ends and the leap day.
    ("0 0 29 2 *", "UTC", "2026-03-01 00:00", ["2028-02-29 00:00", "2032-02-29 00:00"]),
    ("0 0 31 * *", "UTC", "2026-04-01 00:00", ["2026-05-31 00:00", "2026-07-31 00:00"]),
    ("0 12 30 * *", "UTC", "2027-02-01 00:00", ["2027-03-30 12:00", "2027-04-30 12:00"]),
    ("0 0 28-31 2 *", "UTC", "2028-02-28 00:00", ["2028-02-29 00:00", "2029-02-28 00:00"]),
    ("0 9 * * mon-fri", "America/New_York", "2026-03-06 00:00",
     ["2026-03-06 14:00", "2026-03-09 13:00"]),  # US DST starts 2026-03-08
    ("@daily", "Asia/Kolkata", "2026-01-01 00:00", ["2026-01-01 18:30", "2026-01-02 18:30"]),
]  # fmt: skip


@pytest.mark.parametrize(("cron", "zone", "after", "expected"), CASES)
def test_next_ticks(cron, zone, after, expected):
    start = utc(after)
    got = list(islice(cron_ticks(cron, zone, start + timedelta(seconds=1)), len(expected)))
    assert got == [utc(e) for e in expected]
    assert next_tick(cron, zone, start) == utc(expected[0])


def test_a_daily_job_runs_once_on_both_dst_days():
    for day in ("2026-03-29", "2026-10-25"):
        lo = datetime.fromisoformat(f"{day} 00:00").replace(tzinfo=UTC) - timedelta(hours=3)
        hi = lo + timedelta(hours=27)
        ticks = [t for t in islice(cron_ticks("30 2 * * *", "Europe/Berlin", lo), 3) if t < hi]
        assert len(ticks) == 1, ticks


def test_due_ticks_catch_up_window():
    now = utc("2026-05-01 12:00")
    # Every minute, last fired 10 minutes ago; catch-up 5 minutes.
    d = due_ticks("* * * * *", "UTC", now - timedelta(minutes=10), now, timedelta(minutes=5))
    assert d.ticks == [now - timedelta(minutes=m) for m in range(5, -1, -1)]
    assert d.skipped_before == 5  # 11 due, 6 in the window
    assert d.next_run_at == now + timedelta(minutes=1)
    # catch_up 0: only the latest.
    d = due_ticks("* * * * *", "UTC", now - timedelta(minutes=10), now, timedelta(0))
    assert d.ticks == [now] and d.skipped_before == 10
    # Not yet computed: nothing fires, next_run_at is the first tick after now.
    d = due_ticks("0 6 * * *", "Europe/Berlin", None, now, timedelta(0))
    assert d.ticks == [] and d.next_run_at == utc("2026-05-02 04:00")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "0 6 * *"}, "invalid cron"),
        ({"cron": "0 0 6 * * *"}, "invalid cron"),  # croniter reads seconds; SQL does not
        ({"cron": "0 6 * * *", "timezone": "Mars/Base"}, "unknown time zone"),
        ({}, "exactly one of cron and every"),
        ({"cron": "0 6 * * *", "every": 60}, "exactly one of cron and every"),
    ],
)
def test_declarations_are_checked_when_made(kwargs, message):
    with pytest.raises(PgTasksError, match=message):
        schedule("s", "report", into=Registry(), **kwargs)


def test_declarations_go_into_the_registry():
    reg = Registry()

    @task_register("report", schedule="0 6 * * *", timezone="Europe/Berlin", into=reg)
    async def report(ctx: object, params: dict) -> None:
        return None

    schedule("report-weekly", report, cron="0 7 * * mon", params={"kind": "weekly"}, into=reg)
    schedule("sync", "sync", every=300, overlap="skip", catch_up=3600, into=reg)
    assert reg.schedules["report"].cron == "0 6 * * *"
    assert reg.schedules["report-weekly"].task_type == "report"
    assert reg.schedules["sync"].every == timedelta(minutes=5)
    assert reg.schedules["sync"].catch_up == timedelta(hours=1)
    with pytest.raises(PgTasksError, match="already declared differently"):
        schedule("sync", "sync", every=60, into=reg)
