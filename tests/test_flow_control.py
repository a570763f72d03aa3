"""Flow control with real worker processes: the limits hold across workers
because claim_tasks enforces them. Each test reads the tasks' RUNNING periods
(started_at .. finished_at, both written by the database) afterwards; no wall-clock bounds."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

import asyncpg
import pytest

from pgtasks import Client
from tests.apps import flow  # noqa: F401  (registers per_customer for the Client)
from tests.fleet import Fleet, wait_until

APP = "tests/apps/flow.py"
FAST = ("--poll-interval", "0.2")


@pytest.fixture
def fleet(dsn: str, tmp_path):
    f = Fleet(dsn, tmp_path / "logs")
    try:
        yield f
    finally:
        f.stop_all()


async def periods(conn: asyncpg.Connection, where: str = "true") -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT id, queue, params, started_at, finished_at, concurrency_key FROM pgtasks.tasks"
        f" WHERE {where} ORDER BY started_at"
    )


def most_at_once(rows: list[asyncpg.Record]) -> int:
    """The largest number of RUNNING periods that share an instant (ends before starts)."""
    edges = sorted(
        [(r["started_at"], 1) for r in rows] + [(r["finished_at"], -1) for r in rows],
        key=lambda e: (e[0], e[1]),
    )
    now = most = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


async def submit_sleeps(conn: asyncpg.Connection, n: int, queue: str, seconds: float) -> None:
    await conn.execute(
        "SELECT pgtasks.submit_tasks('flow_sleep',"
        " array_fill(jsonb_build_object('seconds', $1::float), ARRAY[$2::int]), queue => $3)",
        seconds, n, queue,
    )  # fmt: skip


@pytest.mark.slow
async def test_max_running_holds_across_four_workers(dsn, conn, fleet):
    await conn.execute("SELECT pgtasks.configure_queue('lim', max_running => 3)")
    await submit_sleeps(conn, 200, "lim", 0.05)
    for _ in range(4):
        fleet.start("--concurrency", "20", *FAST, app=APP)
    await wait_until(
        dsn, "SELECT count(*) = 200 FROM pgtasks.tasks WHERE status = 'DONE'", fleet=fleet
    )
    rows = await periods(conn)
    assert most_at_once(rows) == 3
    assert await conn.fetchval("SELECT max(attempt) FROM pgtasks.tasks") == 1


@pytest.mark.slow
async def test_per_key_limit_one_never_overlaps_within_a_key(dsn, conn, fleet):
    async with Client(dsn) as client:
        await client.submit_many("per_customer", [{"customer": i % 5} for i in range(100)])
    fleet.start("--concurrency", "20", *FAST, app=APP)
    fleet.start("--concurrency", "20", *FAST, app=APP)
    await wait_until(
        dsn, "SELECT count(*) = 100 FROM pgtasks.tasks WHERE status = 'DONE'", fleet=fleet
    )
    rows = await periods(conn)
    by_key: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for r in rows:
        by_key[r["concurrency_key"]].append(r)
    assert sorted(by_key) == [f"customer:{i}" for i in range(5)]
    assert all(most_at_once(v) == 1 for v in by_key.values())
    assert most_at_once(rows) > 1  # different keys do run side by side


@pytest.mark.slow
async def test_rate_limit_no_window_holds_more_starts(dsn, conn, fleet):
    await conn.execute(
        "SELECT pgtasks.configure_queue('rated', rate_limit => 10, rate_period => '1 second')"
    )
    await submit_sleeps(conn, 60, "rated", 0)
    fleet.start("--concurrency", "20", *FAST, app=APP)
    fleet.start("--concurrency", "20", *FAST, app=APP)
    await wait_until(
        dsn, "SELECT count(*) = 60 FROM pgtasks.tasks WHERE status = 'DONE'", fleet=fleet
    )
    starts: list[datetime] = [r["started_at"] for r in await periods(conn)]
    second = timedelta(seconds=1)
    # Every window of one second (closed) starting at a start holds at most 10 starts.
    assert max(sum(1 for s in starts if a <= s <= a + second) for a in starts) <= 10
    # 60 starts at 10 per second need at least 5 full windows.
    assert starts[-1] - starts[0] >= 5 * second


@pytest.mark.slow
async def test_pause_during_a_drain_then_resume(dsn, conn, fleet):
    await submit_sleeps(conn, 150, "p", 0.05)
    fleet.start("--concurrency", "4", *FAST, app=APP)
    await wait_until(
        dsn, "SELECT count(*) >= 20 FROM pgtasks.tasks WHERE status = 'DONE'", fleet=fleet
    )
    await conn.execute("SELECT pgtasks.pause_queue('p')")
    paused_at = await conn.fetchval("SELECT clock_timestamp()")
    await wait_until(
        dsn, "SELECT NOT EXISTS (SELECT 1 FROM pgtasks.tasks WHERE status = 'RUNNING')"
    )
    # The worker claims after the pause (a task of another queue, submitted now, runs):
    # that claim saw the paused queue's older tasks and took none of them.
    probe = await conn.fetchval(
        "SELECT pgtasks.submit_task('flow_sleep', '{\"seconds\": 0}', queue => 'other')"
    )
    await wait_until(
        dsn, "SELECT status = 'DONE' FROM pgtasks.tasks WHERE id = $1", probe, fleet=fleet
    )
    assert await conn.fetchval(
        "SELECT count(*) FROM pgtasks.tasks WHERE queue = 'p' AND started_at > $1", paused_at
    ) == 0  # fmt: skip
    left = await conn.fetchval("SELECT count(*) FROM pgtasks.tasks WHERE status = 'PENDING'")
    assert left > 0
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.tasks WHERE status = 'RUNNING'") == 0
    await conn.execute("SELECT pgtasks.resume_queue('p')")
    await wait_until(
        dsn, "SELECT count(*) = 150 FROM pgtasks.tasks WHERE queue = 'p' AND status = 'DONE'",
        fleet=fleet,
    )  # fmt: skip


@pytest.mark.slow
async def test_killed_worker_slot_frees_when_its_lease_is_rescued(dsn, conn, fleet):
    await conn.execute("SELECT pgtasks.configure_queue('k', max_running => 1)")
    long_id = await conn.fetchval(
        "SELECT pgtasks.submit_task('flow_sleep', '{\"seconds\": 60}', queue => 'k')"
    )
    a = fleet.start("--concurrency", "5", "--lease", "1", *FAST, app=APP)
    await wait_until(
        dsn, "SELECT status = 'RUNNING' FROM pgtasks.tasks WHERE id = $1", long_id, fleet=fleet
    )
    short_id = await conn.fetchval(
        "SELECT pgtasks.submit_task('flow_sleep', '{\"seconds\": 0}', queue => 'k')"
    )
    fleet.kill(a)
    # The dead worker's task still holds the slot until its lease is rescued.
    assert await conn.fetchval(
        "SELECT count(*) FROM pgtasks.claim_tasks('probe', ARRAY['k'], 5)"
    ) == 0  # fmt: skip
    fleet.start("--concurrency", "5", "--lease", "1", *FAST, app=APP)
    await wait_until(
        dsn, "SELECT status = 'DONE' FROM pgtasks.tasks WHERE id = $1", short_id, fleet=fleet
    )
    history = await conn.fetchval(
        "SELECT count(*) FROM pgtasks.task_events WHERE task_id = $1 AND from_status = 'RUNNING'",
        long_id,
    )
    assert history >= 1  # the long task was rescued (RUNNING -> COMMIT) before the slot freed


async def test_client_unique_submit_says_created_or_existed(dsn):
    async with Client(dsn) as client:
        first = await client.submit("per_customer", {"customer": 1, "once": "import:7"})
        again = await client.submit("per_customer", {"customer": 2, "once": "import:7"})
        other = await client.submit("flow_sleep", {}, unique_key="x")
        assert first.created and not again.created and other.created
        assert again == first and isinstance(first, int)
        assert {q["queue"] for q in await client.queues()} == {"default"}
