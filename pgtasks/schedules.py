"""Schedules: declaring them in code, computing cron ticks, and firing due ones.

The database keeps the schedules and decides (sql/0006_schedules.sql): which ticks of a
missed stretch run (catch-up), what to do with a previous task still running (overlap),
and, through the UNIQUE (schedule, schedule_tick) index on tasks, that no tick is ever
enqueued twice. `every` schedules are computed in SQL too. What Python adds is cron: the
ticks of a cron expression in a time zone, with croniter (parsing) and zoneinfo (offsets
and DST), so a non-Python deployment needs a cron library of its own for cron schedules.

Time-zone rules (docs/schedules.md): ticks follow the schedule's wall clock. croniter walks
naive local times, each of which happens once, and each is mapped to an instant:
  * a wall time that does not exist (spring forward: 02:30 on 29 March 2026 in Berlin)
    runs at the first valid instant after the gap (03:00 CEST);
  * a wall time that happens twice (fall back: 02:30 on 25 October 2026) runs at the
    first of the two, once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from croniter import croniter

from pgtasks import queries
from pgtasks.db import TRANSIENT
from pgtasks.registration import Registry, Schedule, TaskRef, registry, type_name
from pgtasks.submission import Duration, ParamsArg, as_timedelta, params_json

__all__ = ["Schedule", "cron_ticks", "declare", "due_ticks", "fire_due", "next_tick", "schedule"]

log = logging.getLogger("pgtasks.worker")

#: Longest DST gap or overlap in the tz database is 2 hours (3 hours kept for safety): a
#: search for ticks at or after an instant starts this much earlier in wall time.
_MAX_SHIFT = timedelta(hours=3)
#: A tick this recent is late, not missed, whatever catch_up says (sql/0006 has the same
#: rule and says why).
LATE_GRACE = timedelta(seconds=2)
#: A stretch of missed cron ticks is walked at most this far; ticks older than that are
#: counted as skipped only up to here (a minutely schedule stopped for 70 days).
MAX_WALK = 100_000


def schedule(
    name: str,
    task_type: TaskRef,
    *,
    cron: str | None = None,
    every: Duration | None = None,
    params: ParamsArg = None,
    queue: str | None = None,
    priority: int | None = None,
    timezone: str = "UTC",
    overlap: str = "allow",
    catch_up: Duration = 0,
    misfire_grace: Duration | None = None,
    into: Registry | None = None,
) -> Schedule:
    """Declare a schedule; workers that load this registry upsert it when they start.

    Several schedules of one type with different params each get their own name. A
    schedule made through SQL or the CLI under the same name is kept as it is.
    `misfire_grace`: a tick the database finds later than this is skipped and counted
    (`skipped_misfire`), not run; None runs the latest missed tick however late.
    """
    s = Schedule(
        name=name,
        task_type=type_name(task_type),
        cron=cron,
        every=as_timedelta(every),
        params=params_json(params),
        queue=queue,
        priority=priority,
        timezone=timezone,
        overlap=overlap,
        catch_up=as_timedelta(catch_up) or timedelta(0),
        misfire_grace=as_timedelta(misfire_grace),
    )
    (into if into is not None else registry).add_schedule(s)
    return s


# -- cron ticks ---------------------------------------------------------------------------


def _instant(naive: datetime, tz: ZoneInfo) -> datetime:
    """The instant a naive wall time of `tz` names: the first of two in a fall-back
    overlap (fold=0), the first valid instant after the gap for one that does not exist."""
    aware = naive.replace(tzinfo=tz, fold=0)
    if aware.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == naive:
        return aware.astimezone(UTC)
    # In a gap: the instants with the offsets before and after bracket the transition;
    # bisect (whole seconds, cron ticks are whole minutes) for the first instant whose wall
    # time is at or after `naive`: the transition itself.
    a = int(naive.replace(tzinfo=tz, fold=1).timestamp())
    b = int(aware.timestamp())
    lo, hi = min(a, b), max(a, b)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).replace(tzinfo=None) >= naive:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


def cron_ticks(cron: str, timezone: str, start: datetime) -> Iterator[datetime]:
    """The ticks of `cron` in `timezone` at or after the instant `start`, as UTC instants,
    in order, each instant once (two wall times in one DST gap share the instant)."""
    tz = ZoneInfo(timezone)
    wall = (start - _MAX_SHIFT).astimezone(tz).replace(tzinfo=None)
    it = croniter(cron, wall - timedelta(seconds=1), ret_type=datetime)
    last: datetime | None = None
    while True:
        naive = it.get_next(datetime)
        t = _instant(naive, tz)
        if t < start or t == last:
            continue
        last = t
        yield t


def next_tick(cron: str, timezone: str, after: datetime) -> datetime:
    """The first tick strictly after the instant `after`."""
    for t in cron_ticks(cron, timezone, after):
        if t > after:
            return t
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass
class DueTicks:
    """What `due_ticks` found: the ticks to fire, the next run and how many were skipped."""

    ticks: list[datetime]  # the ones to hand to fire_schedule
    next_run_at: datetime  # the first tick after now
    skipped_before: int  # due ticks older than the catch-up window, left out


def due_ticks(
    cron: str, timezone: str, next_run_at: datetime | None, now: datetime, catch_up: timedelta
) -> DueTicks:
    """The due ticks of a cron schedule: those in [next_run_at, now]. Only the latest and
    those within `catch_up` of now are listed (the database applies the same rule); the
    older ones are counted. A schedule without next_run_at yet only gets one."""
    if next_run_at is None:
        return DueTicks([], next_tick(cron, timezone, now), 0)
    window = now - max(catch_up, LATE_GRACE)
    kept: list[datetime] = []
    older = 0
    latest: datetime | None = None  # the newest due tick before the window
    walked = 0
    ticks = cron_ticks(cron, timezone, next_run_at)
    while True:
        t = next(ticks)
        if t > now:
            # The latest due tick always runs: the only one when the window holds none.
            if not kept and latest is not None:
                return DueTicks([latest], t, older)
            return DueTicks(kept, t, older + (latest is not None))
        if t >= window:
            kept.append(t)
            continue
        if latest is not None:  # counted once a newer one takes its place
            older += 1
        latest = t
        walked += 1
        if walked == MAX_WALK:  # jump to the window; the ticks in between go uncounted
            ticks = cron_ticks(cron, timezone, window)


# -- firing (the maintainer calls this every second or so) ---------------------------------


async def fire_due(
    pool: asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy,
    *,
    worker_id: str | None = None,
    max_schedules: int = 100,
) -> int:
    """Fire every due schedule this worker claims; returns the number of tasks enqueued.
    One statement to claim the due ones, then one per due schedule."""
    due = await pool.fetch(queries.DUE_SCHEDULES, max_schedules, worker_id)
    enqueued = 0
    for row in due:
        try:
            args: tuple[Any, ...] = (None, None, 0)  # every: SQL computes the ticks
            if row["cron"] is not None:
                d = due_ticks(
                    row["cron"], row["timezone"], row["next_run_at"], row["db_now"], row["catch_up"]
                )
                args = (d.ticks, d.next_run_at, d.skipped_before)
            ids = await pool.fetch(queries.FIRE_SCHEDULE, row["name"], row["revision"], *args)
        except TRANSIENT:
            raise  # the database is away: the maintainer logs it and tries next round
        except (asyncpg.PostgresError, ValueError, KeyError) as exc:
            # One broken schedule must not stop the others; its claim expires and the next
            # round tries again.
            log.warning("schedule %s not fired: %s", row["name"], exc)
            continue
        enqueued += len(ids)
    return enqueued


async def declare(
    conn: asyncpg.Connection | PoolConnectionProxy, schedules: Sequence[Schedule]
) -> None:
    """Upsert declared schedules (pgtasks.declare_schedule): a schedule of the same name
    made through SQL or the CLI is kept as it is."""
    for s in schedules:
        kept = await conn.fetchval(
            queries.DECLARE_SCHEDULE,
            s.name,
            s.task_type,
            s.cron,
            s.every,
            s.params,
            s.queue,
            s.priority,
            s.timezone,
            s.overlap,
            s.catch_up,
            s.misfire_grace,
        )
        if not kept:
            log.info("schedule %s was made through SQL or the CLI; kept as it is", s.name)
