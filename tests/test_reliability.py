"""Never lose a task: kills, leases, cancellation, timeouts, retries, restarts.

Kills and restarts are real: worker processes get SIGKILL, connections are terminated by
the server, and the restart tests run their own PostgreSQL so the shared one stays up.
Leases are short (2 s) so the suite stays quick; no test asserts how fast anything is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest

from pgtasks import (
    Client,
    PermanentError,
    Registry,
    Retry,
    TaskAlreadyFinished,
    TaskContext,
    TaskFailed,
    TaskNotFound,
    Worker,
    task_register,
)
from pgtasks.embedded import EmbeddedPostgres
from tests.conftest import until, wait_for
from tests.fleet import ROOT, Fleet, fresh_conn, start_private_server, wait_until


@pytest.fixture
def fleet(dsn: str, tmp_path):
    f = Fleet(dsn, tmp_path / "logs")
    try:
        yield f
    finally:
        f.stop_all()


# -- kill -9 -------------------------------------------------------------------------------


@pytest.mark.slow
async def test_killed_worker_task_is_finished_by_another_and_late_write_is_fenced(dsn, conn, fleet):
    a = fleet.start("--lease", "2", "--concurrency", "2")
    tid = await conn.fetchval("SELECT pgtasks.submit_task('hang_first')")
    await wait_until(dsn, "SELECT count(*) = 1 FROM test_runs WHERE task_id = $1", tid, fleet=fleet)
    dead_worker = await conn.fetchval("SELECT worker_id FROM pgtasks.tasks WHERE id = $1", tid)
    assert dead_worker is not None

    fleet.kill(a)
    # The task is still RUNNING under the dead worker: nothing but its lease can free it.
    row = await conn.fetchrow("SELECT status::text, attempt FROM pgtasks.tasks WHERE id=$1", tid)
    assert tuple(row) == ("RUNNING", 1)

    fleet.start("--lease", "2", "--concurrency", "2")
    await wait_until(
        dsn, "SELECT status = 'DONE' FROM pgtasks.tasks WHERE id = $1", tid, fleet=fleet
    )
    row = await conn.fetchrow(
        "SELECT attempt, retry_count, result, worker_id FROM pgtasks.tasks WHERE id = $1", tid
    )
    assert row["attempt"] == 2
    assert row["retry_count"] == 1  # the lost attempt counts as a failed one
    assert row["result"] == {"finished_on_attempt": 2}
    assert row["worker_id"] is None
    runs = await conn.fetch("SELECT attempt FROM test_runs WHERE task_id = $1 ORDER BY at", tid)
    assert [r["attempt"] for r in runs] == [1, 2]

    errors = await conn.fetch(
        "SELECT attempt, error FROM pgtasks.task_errors WHERE task_id=$1", tid
    )
    assert [e["attempt"] for e in errors] == [1]
    assert "lease expired" in errors[0]["error"] and dead_worker in errors[0]["error"]
    history = await conn.fetch(
        "SELECT from_status::text, to_status::text, attempt, worker_id FROM pgtasks.task_events"
        " WHERE task_id = $1 ORDER BY id",
        tid,
    )
    assert [(h[0], h[1], h[2]) for h in history] == [
        (None, "PENDING", 0),
        ("PENDING", "RUNNING", 1),
        ("RUNNING", "COMMIT", 1),
        ("COMMIT", "RUNNING", 2),
        ("RUNNING", "DONE", 2),
    ]
    assert history[1]["worker_id"] == dead_worker and history[3]["worker_id"] != dead_worker

    # The registry shows the killed worker as dead (not seen within its lease), and the
    # CLI lists it only when asked for --all.
    views = {r["worker_id"]: r["alive"] for r in await conn.fetch("SELECT * FROM pgtasks.workers")}
    assert views[dead_worker] is False and list(views.values()).count(True) == 1
    shown = await asyncio.to_thread(cli, dsn, "workers")
    assert shown.returncode == 0 and dead_worker not in shown.stdout
    shown = await asyncio.to_thread(cli, dsn, "workers", "--all")
    assert dead_worker in shown.stdout and "dead" in shown.stdout

    # The dead attempt wakes up late (simulated): every write it tries is refused. Its token
    # went with its lease; any token but the current holder's is refused alike.
    dead_token = "0" * 64
    for stmt in (
        "SELECT pgtasks.finish_task($1, $2, '\"late\"')",
        "SELECT pgtasks.fail_task($1, $2, 'late error')",
        "SELECT pgtasks.checkpoint($1, $2, 'late-step', '1')",
    ):
        with pytest.raises(asyncpg.PostgresError) as info:
            await conn.execute(stmt, tid, dead_token)
        assert info.value.sqlstate == "PT002", stmt
    rejected = await conn.fetch(
        "SELECT * FROM pgtasks.finish_tasks($1, $2, $3::jsonb[])", [tid], [dead_token], ["late"]
    )
    assert [r[0] for r in rejected] == [tid]
    assert await conn.fetchval("SELECT result FROM pgtasks.tasks WHERE id=$1", tid) == {
        "finished_on_attempt": 2
    }


# -- in-process workers with their own task types ---------------------------------------------

REG = Registry()
STOPPED: dict[int, str] = {}  # task id -> what the task saw when it was stopped
RUN_AT: dict[tuple[int, int], datetime] = {}  # (task id, attempt) -> run_at it was claimed at
RELEASE = threading.Event()  # lets abandoned sync tasks end at teardown


async def _note_run_at(ctx: TaskContext) -> None:
    RUN_AT[ctx.task_id, ctx.attempt] = await ctx.pool.fetchval(
        "SELECT run_at FROM pgtasks.tasks WHERE id = $1", ctx.task_id
    )


@task_register("hang", into=REG)
async def hang(ctx: TaskContext, params: dict[str, Any]) -> None:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        STOPPED[ctx.task_id] = "cancelled"
        raise


@task_register("sync_until_cancelled", into=REG)
def sync_until_cancelled(ctx: Any, params: dict[str, Any]) -> str:
    while not ctx.cancelled:
        time.sleep(0.01)
    STOPPED[ctx.task_id] = "saw ctx.cancelled"
    return "ignored: the worker already gave up on this attempt"


@task_register("sync_stubborn", into=REG)
def sync_stubborn(ctx: Any, params: dict[str, Any]) -> str:
    RELEASE.wait(600)  # never looks at ctx.cancelled
    return "too late"


@task_register("quick", into=REG)
async def quick(ctx: TaskContext, params: dict[str, Any]) -> str:
    return "ok"


@task_register("sync_quick", into=REG)
def sync_quick(ctx: Any, params: dict[str, Any]) -> str:
    return "ok"


@task_register("always_fails", into=REG, backoff_base=0.1)
async def always_fails(ctx: TaskContext, params: dict[str, Any]) -> None:
    await _note_run_at(ctx)
    raise ValueError(f"attempt {ctx.attempt} broke")


@task_register("retry_in", into=REG)
async def retry_in(ctx: TaskContext, params: dict[str, Any]) -> str:
    await _note_run_at(ctx)
    if ctx.retry_count == 0:
        raise Retry(delay=params["delay"], reason="upstream asked us to come back later")
    return "done"


@task_register("permanent", into=REG)
async def permanent(ctx: TaskContext, params: dict[str, Any]) -> None:
    raise PermanentError("bad input; no retry can fix it")


@task_register("no_retry_on_keyerror", into=REG, no_retry_on=(KeyError,))
async def no_retry_on_keyerror(ctx: TaskContext, params: dict[str, Any]) -> None:
    raise KeyError("missing")


@pytest.fixture(autouse=True)
def _fresh_notes():
    """Each test has its own database, so task ids start at 1 again: forget the last test's."""
    STOPPED.clear()
    RUN_AT.clear()
    RELEASE.clear()
    yield
    RELEASE.set()


@contextlib.asynccontextmanager
async def worker(dsn: str, **kw: Any) -> AsyncIterator[Worker]:
    opts: dict[str, Any] = {"lease": 2.0, "poll_interval": 0.2, "shutdown_grace": 1.0}
    w = Worker(dsn, registry=REG, **{**opts, **kw})
    t = asyncio.create_task(w.run())
    try:
        # Types declared only in REG get their policy (e.g. backoff_base)
        # from the database once the worker registered them: submit after that.
        await asyncio.wait_for(w.ready.wait(), 30)
        yield w
    finally:
        w.stop()
        await asyncio.wait_for(t, 60)


async def status(conn, tid: int) -> str:
    return str(await conn.fetchval("SELECT status FROM pgtasks.tasks WHERE id = $1", tid))


# -- cancellation -----------------------------------------------------------------------------


async def test_cancel_pending_and_waiting_tasks_at_once(dsn, conn):
    async with Client(dsn) as client:
        later = await client.submit("quick", delay=3600)
        assert await client.cancel(later) == "PENDING"
        assert await status(conn, later) == "CANCELLED"
        # COMMIT: claimed once, then handed back to wait (here through the SQL API).
        waiting = await client.submit("quick")
        (claim,) = await conn.fetch("SELECT * FROM pgtasks.claim_tasks('w', max_tasks => 1)")
        await conn.execute(
            "SELECT pgtasks.yield_task($1, $2, now() + interval '1 hour')",
            waiting,
            claim["lease_token"],
        )
        assert await client.cancel(waiting) == "COMMIT"
        assert await status(conn, waiting) == "CANCELLED"
    # A worker around does not resurrect them: it claims after the cancels (a task submitted
    # later runs) and runs its maintenance (a task left with an expired lease is rescued).
    async with Client(dsn) as client, worker(dsn) as w:
        probe = await client.submit("quick")
        assert await client.wait(probe, timeout=60) == "ok"
        await conn.execute("SELECT pgtasks.submit_task('no_worker_runs_this')")
        await conn.fetch(
            "SELECT * FROM pgtasks.claim_tasks('dead', max_tasks => 1, lease => interval '1 min')"
        )
        await conn.execute("SELECT pgtasks.advance_clock(interval '61 seconds')")
        await until(lambda: w.stats.rescued >= 1)
    assert await status(conn, later) == "CANCELLED"
    assert await status(conn, waiting) == "CANCELLED"


async def test_cancel_running_async_task_stops_it_and_frees_the_slot(dsn, conn):
    async with Client(dsn) as client, worker(dsn, concurrency=1) as w:
        tid = await client.submit("hang")
        await wait_for(conn, "SELECT status = 'RUNNING' FROM pgtasks.tasks WHERE id=$1", tid)
        assert await client.cancel(tid) == "RUNNING"
        await until(lambda: tid in STOPPED)
        assert STOPPED[tid] == "cancelled"
        # The only slot is free again: the next task runs.
        nxt = await client.submit("quick")
        assert await client.wait(nxt, timeout=60) == "ok"
    assert w.stats.succeeded == 1  # read after the worker stopped: its counters are final
    assert await status(conn, tid) == "CANCELLED"
    assert (
        await conn.fetchval("SELECT count(*) FROM pgtasks.task_errors WHERE task_id=$1", tid) == 0
    )
    last = await conn.fetchrow(
        "SELECT from_status::text, to_status::text FROM pgtasks.task_events"
        " WHERE task_id = $1 ORDER BY id DESC LIMIT 1",
        tid,
    )
    assert tuple(last) == ("RUNNING", "CANCELLED")


async def test_cancel_running_sync_task_sets_ctx_cancelled(dsn, conn):
    async with Client(dsn) as client, worker(dsn, concurrency=1):
        tid = await client.submit("sync_until_cancelled")
        await wait_for(conn, "SELECT status = 'RUNNING' FROM pgtasks.tasks WHERE id=$1", tid)
        assert await client.cancel(tid) == "RUNNING"
        await until(lambda: tid in STOPPED)
        assert STOPPED[tid] == "saw ctx.cancelled"
        nxt = await client.submit("sync_quick")
        assert await client.wait(nxt, timeout=60) == "ok"
    # What the thread returned after the cancel was dropped, not stored.
    row = await conn.fetchrow("SELECT status::text, result FROM pgtasks.tasks WHERE id=$1", tid)
    assert tuple(row) == ("CANCELLED", None)


async def test_cancelled_sync_task_that_ignores_it_is_abandoned(dsn, conn):
    """A blocking call cannot be interrupted: the worker stops waiting and moves on."""
    async with Client(dsn) as client, worker(dsn, concurrency=1):
        first = await client.submit("sync_stubborn")
        await wait_for(conn, "SELECT status = 'RUNNING' FROM pgtasks.tasks WHERE id=$1", first)
        await client.cancel(first)
        # Slot and thread capacity are both free: more sync tasks run meanwhile.
        for _ in range(3):
            nxt = await client.submit("sync_quick")
            assert await client.wait(nxt, timeout=60) == "ok"
        stubborn_threads = [t for t in threading.enumerate() if t.daemon and t.is_alive()]
        assert stubborn_threads  # still blocked, abandoned, and not holding anything up
    assert await status(conn, first) == "CANCELLED"


async def test_cancel_reaches_a_polling_only_worker_through_its_heartbeat(dsn, conn):
    """Without LISTEN (PgBouncer) the cancel NOTIFY is not heard; the heartbeat says it."""
    async with Client(dsn) as client, worker(dsn, concurrency=1, listen=False, lease=1.5):
        tid = await client.submit("hang")
        await wait_for(conn, "SELECT status = 'RUNNING' FROM pgtasks.tasks WHERE id=$1", tid)
        await client.cancel(tid)
        await until(lambda: tid in STOPPED)
    assert await status(conn, tid) == "CANCELLED"


@pytest.mark.slow
async def test_cancel_finished_or_missing_task_is_a_clear_error(dsn, conn):
    async with Client(dsn) as client, worker(dsn):
        done = await client.submit("quick")
        assert await client.wait(done, timeout=60) == "ok"
        failed = await client.submit("permanent")
        with pytest.raises(TaskFailed):
            await client.wait(failed, timeout=60)
    async with Client(dsn) as client:
        for tid, was in ((done, "DONE"), (failed, "FAILED")):
            with pytest.raises(TaskAlreadyFinished, match=f"already finished as {was}"):
                await client.cancel(tid)
        cancelled = await client.submit("quick", delay=3600)
        await client.cancel(cancelled)
        with pytest.raises(TaskAlreadyFinished):
            await client.cancel(cancelled)
        with pytest.raises(TaskNotFound):
            await client.cancel(10**12)
    with pytest.raises(asyncpg.PostgresError) as info:
        await conn.execute("SELECT pgtasks.cancel_task($1)", done)
    assert info.value.sqlstate == "PT004"
    assert await status(conn, done) == "DONE"  # the failed cancel changed nothing
    proc = await asyncio.to_thread(cli, dsn, "cancel", str(done))
    assert proc.returncode == 1
    assert "already finished as DONE" in proc.stderr and "Traceback" not in proc.stderr


# -- timeouts -------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_async_task_past_its_time_limit_is_stopped_retried_then_failed(dsn, conn):
    async with Client(dsn) as client, worker(dsn, concurrency=2):
        tid = await client.submit("hang", timeout=0.5, max_retries=1)
        with pytest.raises(TaskFailed, match="timed out"):
            await client.wait(tid, timeout=60)
    errors = await conn.fetch(
        "SELECT attempt, error FROM pgtasks.task_errors WHERE task_id = $1 ORDER BY attempt", tid
    )
    assert [e["attempt"] for e in errors] == [1, 2]
    assert all("timed out" in e["error"] for e in errors)
    assert STOPPED[tid] == "cancelled"  # the coroutine itself was cancelled, not left running
    row = await conn.fetchrow(
        "SELECT status::text, retry_count FROM pgtasks.tasks WHERE id=$1", tid
    )
    assert tuple(row) == ("FAILED", 1)


async def test_sync_task_past_its_time_limit_is_flagged_and_abandoned(dsn, conn):
    async with Client(dsn) as client, worker(dsn, concurrency=1):
        tid = await client.submit("sync_until_cancelled", timeout=0.5, max_retries=0)
        with pytest.raises(TaskFailed, match="timed out"):
            await client.wait(tid, timeout=60)
        await until(lambda: tid in STOPPED)  # the thread saw ctx.cancelled
        nxt = await client.submit("sync_quick")  # and the slot is free again
        assert await client.wait(nxt, timeout=60) == "ok"


async def test_database_expires_a_task_past_its_deadline_despite_heartbeats(conn):
    """A buggy worker that keeps heartbeating cannot hold a task past its time limit."""
    tid = await conn.fetchval("SELECT pgtasks.submit_task('t', timeout => interval '1 minute')")
    (claim,) = await conn.fetch(
        "SELECT * FROM pgtasks.claim_tasks('buggy', lease => interval '1 hour')"
    )
    held = [claim["lease_token"]]
    row = await conn.fetchrow(
        "SELECT lease_expires_at, deadline FROM pgtasks.tasks WHERE id=$1", tid
    )
    assert row["lease_expires_at"] == row["deadline"]  # the lease never outlives the deadline
    assert await conn.fetchval("SELECT pgtasks.rescue_expired()") == 0
    await conn.execute("SELECT pgtasks.advance_clock(interval '61 seconds')")
    await conn.fetch(
        "SELECT * FROM pgtasks.heartbeat('buggy', $1, $2, interval '1 hour')", [tid], held
    )
    assert await conn.fetchval("SELECT pgtasks.rescue_expired()") == 1
    row = await conn.fetchrow(
        "SELECT status::text, retry_count, error FROM pgtasks.tasks WHERE id = $1", tid
    )
    assert (row["status"], row["retry_count"]) == ("COMMIT", 1)
    assert "timed out" in row["error"]
    lost = await conn.fetch("SELECT * FROM pgtasks.heartbeat('buggy', $1, $2)", [tid], held)
    assert [r[0] for r in lost] == [tid]  # and the buggy worker is told to stop it


# -- retries ----------------------------------------------------------------------------------


async def test_backoff_grows_exponentially_with_jitter_and_a_cap(conn):
    for n in range(1, 6):
        rows = await conn.fetch(
            "SELECT extract(epoch FROM pgtasks.backoff($1)) AS s FROM generate_series(1, 200)", n
        )
        values = [float(r["s"]) for r in rows]
        nominal = 2 ** (n - 1)
        assert min(values) >= 0.8 * nominal and max(values) <= 1.2 * nominal, n
        assert len(set(values)) > 100, "backoff carries no jitter"
    assert await conn.fetchval("SELECT pgtasks.backoff(40) = interval '1 hour'")
    base = await conn.fetchval(
        "SELECT extract(epoch FROM pgtasks.backoff(3, interval '100 milliseconds'))"
    )
    assert 0.32 <= float(base) <= 0.48


async def test_failing_task_retries_with_growing_jittered_delays_and_keeps_every_error(dsn, conn):
    submit = (
        "SELECT pgtasks.submit_task('always_fails', max_retries => 3,"
        " backoff_base => interval '1 minute')"
    )
    step = timedelta(minutes=5)  # past the longest backoff here, 4 minutes + 20 %
    async with Client(dsn) as client, worker(dsn, concurrency=4):
        ids = [await conn.fetchval(submit) for _ in range(3)]
        for n in (1, 2, 3):
            # All three failed attempt n and wait out their backoff: the clock moves past it.
            await wait_for(
                conn,
                "SELECT count(*) = 3 FROM pgtasks.tasks"
                " WHERE status = 'COMMIT' AND retry_count = $1",
                n,
            )
            await conn.execute("SELECT pgtasks.advance_clock($1)", step)
        for tid in ids:
            with pytest.raises(TaskFailed, match="attempt 4 broke"):
                await client.wait(tid, timeout=60)
    ratios = []
    for tid in ids:
        errors = await conn.fetch(
            "SELECT attempt, error, traceback, at FROM pgtasks.task_errors"
            " WHERE task_id = $1 ORDER BY attempt",
            tid,
        )
        # One history row per attempt, each with its own message and traceback.
        assert [e["attempt"] for e in errors] == [1, 2, 3, 4]
        assert [e["error"] for e in errors] == [
            f"ValueError: attempt {a} broke" for a in (1, 2, 3, 4)
        ]
        assert all("Traceback" in e["traceback"] and "ValueError" in e["traceback"] for e in errors)
        # The delay before attempt n+1 is exactly what fail_task scheduled: backoff_base
        # 1 minute, doubled each time, +-20 % jitter. run_at is on pgtasks.now(), an error's
        # `at` on the wall clock, which was (n - 1) steps behind when attempt n failed.
        delays = [
            (RUN_AT[tid, n + 1] - errors[n - 1]["at"] - (n - 1) * step).total_seconds()
            for n in (1, 2, 3)
        ]
        assert delays[0] < delays[1] < delays[2]
        for n, d in zip((1, 2, 3), delays, strict=True):
            ratio = d / (60 * 2 ** (n - 1))
            assert 0.8 - 1e-4 <= ratio <= 1.2 + 1e-4, (n, d)  # intervals round to 1 us
            ratios.append(round(ratio, 6))
    assert len(set(ratios)) > 1, "every delay was the same: no jitter"
    row = await conn.fetchrow(
        "SELECT error_count, last_traceback FROM pgtasks.failed_tasks WHERE id = $1", ids[0]
    )
    assert row["error_count"] == 4 and "ValueError" in row["last_traceback"]


async def test_retry_with_explicit_delay_is_honoured(dsn, conn):
    # A day ahead of the wall clock: a delay counted from now() would already be over.
    await conn.execute("SELECT pgtasks.advance_clock(interval '1 day')")
    async with Client(dsn) as client, worker(dsn):
        tid = await client.submit("retry_in", {"delay": 3600})
        await wait_for(
            conn, "SELECT status = 'COMMIT' AND retry_count = 1 FROM pgtasks.tasks WHERE id=$1", tid
        )
        await conn.execute("SELECT pgtasks.advance_clock(interval '1 hour')")
        assert await client.wait(tid, timeout=60) == "done"
    (err,) = await conn.fetch(
        "SELECT attempt, error, at FROM pgtasks.task_errors WHERE task_id=$1", tid
    )
    assert err["attempt"] == 1 and "upstream asked us" in err["error"]
    assert RUN_AT[tid, 2] - err["at"] == timedelta(days=1, hours=1)  # `at` is the wall clock
    assert await conn.fetchval("SELECT retry_count FROM pgtasks.tasks WHERE id = $1", tid) == 1


async def test_permanent_errors_skip_retries(dsn, conn):
    async with Client(dsn) as client, worker(dsn):
        perm = await client.submit("permanent", max_retries=5)
        keyerr = await client.submit("no_retry_on_keyerror", max_retries=5)
        retried = await client.submit("always_fails", max_retries=1)
        for tid in (perm, keyerr, retried):
            with pytest.raises(TaskFailed):
                await client.wait(tid, timeout=60)
    counts = dict(
        await conn.fetch(
            "SELECT id, (SELECT count(*) FROM pgtasks.task_errors e WHERE e.task_id = t.id)"
            " FROM pgtasks.tasks t"
        )
    )
    assert counts == {perm: 1, keyerr: 1, retried: 2}
    tb = await conn.fetchval("SELECT traceback FROM pgtasks.task_errors WHERE task_id=$1", perm)
    assert "PermanentError: bad input" in tb
    assert await conn.fetchval("SELECT retry_count FROM pgtasks.tasks WHERE id=$1", perm) == 0


@pytest.mark.slow
async def test_failed_tasks_are_listed_and_can_be_retried_by_hand(dsn, conn):
    async with Client(dsn) as client, worker(dsn):
        tid = await client.submit("always_fails", max_retries=0)
        with pytest.raises(TaskFailed):
            await client.wait(tid, timeout=60)
    proc = await asyncio.to_thread(cli, dsn, "failed")
    assert proc.returncode == 0, proc.stderr
    assert str(tid) in proc.stdout and "always_fails" in proc.stdout
    assert "ValueError: attempt 1" in proc.stdout
    proc = await asyncio.to_thread(cli, dsn, "failed", "--type", "nothing-like-it")
    assert proc.returncode == 0 and "always_fails" not in proc.stdout
    async with Client(dsn) as client:
        await client.retry(tid)
    row = await conn.fetchrow(
        "SELECT status::text, retry_count FROM pgtasks.tasks WHERE id=$1", tid
    )
    assert tuple(row) == ("PENDING", 0)
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.failed_tasks") == 0
    # The error history of the earlier attempts is kept across the manual retry.
    assert (
        await conn.fetchval("SELECT count(*) FROM pgtasks.task_errors WHERE task_id=$1", tid) == 1
    )


async def test_unstorable_result_fails_that_task_only(dsn, conn):
    """jsonb cannot hold \\u0000: that task fails; the worker's other results still land."""
    async with Client(dsn) as client, worker(dsn, concurrency=4):
        ids = await client.submit_many("quick", [{}] * 3)
        bad = await client.submit("nul_result")
        more = await client.submit_many("quick", [{}] * 3)
        with pytest.raises(TaskFailed, match="result could not be stored"):
            await client.wait(bad, timeout=60)
        for tid in ids + more:
            assert await client.wait(tid, timeout=60) == "ok"
        later = await client.submit("quick")
        assert await client.wait(later, timeout=60) == "ok"


@task_register("nul_result", into=REG)
async def nul_result(ctx: TaskContext, params: dict[str, Any]) -> str:
    return "a\x00b"


# -- workers view ---------------------------------------------------------------------------


@pytest.mark.slow
async def test_workers_view_shows_live_workers_and_what_they_hold(dsn, conn):
    async with Client(dsn) as client, worker(dsn, concurrency=3, queues=["default"]) as w:
        tid = await client.submit("hang")
        await wait_for(conn, "SELECT status = 'RUNNING' FROM pgtasks.tasks WHERE id=$1", tid)
        row = await conn.fetchrow("SELECT * FROM pgtasks.workers")
        assert row["worker_id"] == w.worker_id
        assert (row["pid"], row["queues"], row["concurrency"]) == (os.getpid(), ["default"], 3)
        assert row["alive"] and row["running"] == 1
        proc = await asyncio.to_thread(cli, dsn, "workers")
        assert proc.returncode == 0, proc.stderr
        assert w.worker_id in proc.stdout and "1/3" in proc.stdout and "alive" in proc.stdout
        await client.cancel(tid)
    # A clean stop unregisters.
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.workers") == 0


def cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pgtasks.cli", "--database-url", dsn, *args],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip


# -- connection faults ----------------------------------------------------------------------


@pytest.fixture
async def private_server(tmp_path) -> AsyncIterator[tuple[EmbeddedPostgres, str]]:
    """A PostgreSQL of this test's own: restarting it cannot disturb other tests."""
    server, url = await start_private_server(tmp_path / "pg")
    try:
        yield server, url
    finally:
        await asyncio.to_thread(server.destroy)


@pytest.mark.slow
async def test_worker_survives_postgres_restart_and_loses_nothing(private_server, tmp_path):
    server, url = private_server
    fleet = Fleet(url, tmp_path / "logs")
    try:
        proc = fleet.start("--lease", "2", "--concurrency", "4", "--poll-interval", "0.5")
        async with Client(url) as client:
            before = await client.submit_many(
                "chaos", [{"n": i, "lo": 0.2, "hi": 0.6} for i in range(30)]
            )
        await wait_until(url, "SELECT count(*) >= 5 FROM pgtasks.tasks WHERE status = 'DONE'")
        await wait_until(url, "SELECT count(*) > 0 FROM pgtasks.tasks WHERE status = 'RUNNING'")
        await asyncio.to_thread(server.restart)  # fast shutdown: every connection is cut
        async with Client(url) as client:
            after = await client.submit_many("chaos", [{"n": i} for i in range(30, 40)])
        await wait_until(
            url, "SELECT bool_and(status = 'DONE') FROM pgtasks.tasks", timeout=120, fleet=fleet
        )
        assert proc.poll() is None, "the worker process must ride through the restart"
        async with fresh_conn(url) as conn:
            rows = await conn.fetch("SELECT id, params, result FROM pgtasks.tasks")
            assert len(rows) == len(before) + len(after) == 40
            assert all(r["result"] == r["params"]["n"] * 2 for r in rows)
            assert await conn.fetchval("SELECT count(*) FROM test_runs") >= 40
            # The same worker, reconnected, did the work on both sides of the restart.
            workers = await conn.fetchval(
                "SELECT count(DISTINCT worker_id) FROM pgtasks.task_events"
                " WHERE to_status = 'RUNNING'"
            )
            assert workers == 1
            assert await conn.fetchval("SELECT alive FROM pgtasks.workers")
        assert "LISTEN connection lost" in fleet.tails(10_000)  # it did see the restart
    finally:
        fleet.stop_all()


class _Outage:
    """Holds two tasks at the edge of their last writes until the server is down."""

    reached: set[str] = set()
    go = asyncio.Event()


@task_register("step_across_outage", into=REG)
async def step_across_outage(ctx: TaskContext, params: dict[str, Any]) -> dict[str, int]:
    async def held() -> int:
        _Outage.reached.add("step")
        await _Outage.go.wait()
        _Outage.reached.add("step computed")
        await ctx.log("INFO", "step computed")  # written before the checkpoint
        return 42

    value = await ctx.step("held", held)  # its checkpoint meets the stopped server
    return {"step": value}


@task_register("return_across_outage", into=REG)
async def return_across_outage(ctx: TaskContext, params: dict[str, Any]) -> dict[str, bool]:
    _Outage.reached.add("return")
    await _Outage.go.wait()
    _Outage.reached.add("returned")
    await ctx.progress(2, 2, "done")  # written before the result
    return {"returned": True}


@pytest.mark.slow
async def test_result_and_checkpoint_computed_during_an_outage_are_kept(private_server):
    """The server stops just as a task returns and another checkpoints a step. The final
    flush and the checkpoint are retried on a fresh connection while the lease holds, so
    both tasks end DONE on their first attempt: nothing already computed is redone."""
    server, url = private_server
    _Outage.reached = set()
    _Outage.go = asyncio.Event()
    async with worker(url, lease=30.0, concurrency=2) as w:
        async with Client(url) as client:
            ids = [
                await client.submit(name, {})
                for name in ("step_across_outage", "return_across_outage")
            ]
        await until(lambda: _Outage.reached == {"step", "return"}, what="both tasks held")
        await asyncio.to_thread(server.stop)
        _Outage.go.set()
        # Their writes start at once and meet the stopped server while it starts again.
        await until(lambda: len(_Outage.reached) == 4, what="both tasks computed")
        await asyncio.to_thread(server.start)
        await wait_until(url, "SELECT bool_and(status = 'DONE') FROM pgtasks.tasks", timeout=60)
        assert w._writer is not None
        retries = w._writer.outage_retries
    async with fresh_conn(url) as conn:
        rows = await conn.fetch(
            "SELECT attempt, retry_count, result, progress_message FROM pgtasks.tasks"
            " WHERE id = ANY($1::bigint[]) ORDER BY id",
            ids,
        )
        assert [(r["attempt"], r["retry_count"]) for r in rows] == [(1, 0), (1, 0)]
        assert [r["result"] for r in rows] == [{"step": 42}, {"returned": True}]
        assert rows[1]["progress_message"] == "done"
        logged = await conn.fetchval(
            "SELECT count(*) FROM pgtasks.task_logs"
            " WHERE task_id = $1 AND message = 'step computed'",
            ids[0],
        )
        assert logged >= 1  # at least once: a batch whose answer was lost is sent again
    assert retries > 0  # the writes did meet the outage


@pytest.mark.slow
async def test_worker_survives_killed_connections_and_listens_again(
    dsn, conn, postgresql, tmp_path
):
    """pg_terminate_backend on every worker connection, twice, mid-work.

    The poll interval is ten minutes, so the last task can only be picked up through a
    re-established LISTEN (or the wake-up the worker gives itself on reconnecting).
    """
    fleet = Fleet(dsn, tmp_path / "logs")
    ours = [await conn.fetchval("SELECT pg_backend_pid()"), postgresql.info.backend_pid]
    others = """FROM pg_stat_activity WHERE datname = current_database()
                AND backend_type = 'client backend' AND pid <> pg_backend_pid()
                AND pid <> ALL($1::int[])"""
    try:
        proc = fleet.start("--lease", "2", "--concurrency", "4", "--poll-interval", "600")
        async with Client(dsn) as client:
            first = await client.submit("chaos", {"n": 0})
            assert await client.wait(first, timeout=60) == 0  # woken by NOTIFY
            await client.submit_many(
                "chaos", [{"n": i, "lo": 0.2, "hi": 0.5} for i in range(1, 21)]
            )
        cut: list[int] = []
        for _ in range(2):
            await wait_until(dsn, "SELECT count(*) > 0 FROM pgtasks.tasks WHERE status='RUNNING'")
            # Retried until it hit something: the worker's connections, mid-work. The second
            # round cuts only connections opened after the first: the worker reconnected.
            cut += await wait_for(
                conn,
                f"SELECT array_agg(pid) FILTER (WHERE pg_terminate_backend(pid)) {others}",
                ours + cut,
            )
        await wait_until(
            dsn, "SELECT bool_and(status = 'DONE') FROM pgtasks.tasks", timeout=120, fleet=fleet
        )
        # Wait until the listener is back (its last statement is a LISTEN, or the
        # keep-alive ping it sends every 5 s), then submit once more.
        await wait_until(
            dsn,
            f"SELECT count(*) > 0 {others} AND (query ILIKE 'LISTEN%' OR query = 'SELECT 1')",
            ours,
            fleet=fleet,
        )
        async with Client(dsn) as client:
            last = await client.submit("chaos", {"n": 99})
            assert await client.wait(last, timeout=60) == 198
        assert proc.poll() is None
        rows = await conn.fetch("SELECT params, result FROM pgtasks.tasks")
        assert len(rows) == 22 and all(r["result"] == r["params"]["n"] * 2 for r in rows)
    finally:
        fleet.stop_all()


@pytest.mark.slow
async def test_worker_started_before_the_database_waits_for_it(private_server, tmp_path):
    """An unreachable database is logged and retried, never a crash loop."""
    server, url = private_server
    await asyncio.to_thread(server.stop)
    fleet = Fleet(url, tmp_path / "logs")
    try:
        proc = fleet.start("--lease", "2", "--poll-interval", "0.5")
        log = fleet.logs[proc.pid]
        await until(lambda: "database unreachable" in log.read_text(), timeout=60)
        assert proc.poll() is None
        await asyncio.to_thread(server.start)  # same port again
        async with Client(url) as client:
            tid = await client.submit("chaos", {"n": 21})
            assert await client.wait(tid, timeout=60) == 42
        assert proc.poll() is None
    finally:
        fleet.stop_all()


@pytest.mark.slow
async def test_sigterm_hands_tasks_back_even_when_a_sync_task_ignores_it(dsn, conn, tmp_path):
    """Graceful stop: the grace period, then unfinished tasks go back to COMMIT at once and
    the process exits, even with a blocking call that never returns stuck in a thread."""
    fleet = Fleet(dsn, tmp_path / "logs")
    try:
        proc = fleet.start("--grace", "0.5", "--concurrency", "2")
        stuck = await conn.fetchval("SELECT pgtasks.submit_task('sync_stubborn')")
        hung = await conn.fetchval("SELECT pgtasks.submit_task('hang_first')")
        await wait_for(conn, "SELECT count(*) = 2 FROM pgtasks.tasks WHERE status='RUNNING'")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 60) == 0
        rows = await conn.fetch(
            "SELECT id, status::text, retry_count, run_at <= now() AS ready"
            " FROM pgtasks.tasks ORDER BY id"
        )
        # Handed back, not failed: no retry used, claimable right away by another worker.
        assert [tuple(r) for r in rows] == [(stuck, "COMMIT", 0, True), (hung, "COMMIT", 0, True)]
        assert await conn.fetchval("SELECT count(*) FROM pgtasks.workers") == 0  # unregistered
    finally:
        fleet.stop_all()


# -- a stop under load ------------------------------------------------------------------------


@task_register("brief", into=REG, max_retries=0)
async def brief(ctx: TaskContext, params: dict[str, Any]) -> str:
    await asyncio.sleep(0.005)
    return "ok"


@pytest.mark.slow
async def test_stop_under_load_hands_back_every_claimed_task_spending_no_retry(dsn, conn):
    """A producer submits in batches while a busy worker stops, many times over: each stop
    leaves no task RUNNING (the rows of a finish-and-claim still in flight at the stop are
    handed back too), and no task spends a retry (max_retries=0 would end it FAILED)."""
    async with Client(dsn) as client:
        producing = True

        async def produce() -> None:
            while producing:
                await client.submit_many("brief", [{} for _ in range(128)])
                await asyncio.sleep(0.02)

        feeder = asyncio.create_task(produce())
        try:
            for _ in range(12):
                # A long lease: a stranded task would stay RUNNING well past the check.
                w = Worker(
                    dsn,
                    registry=REG,
                    concurrency=8,
                    lease=60,
                    poll_interval=0.2,
                    shutdown_grace=5.0,
                )
                t = asyncio.create_task(w.run())
                await asyncio.wait_for(w.ready.wait(), 30)
                await until(lambda w=w: w.stats.succeeded > 50, what="the worker busy")
                w.stop()
                await asyncio.wait_for(t, 60)
                running = await conn.fetchval(
                    "SELECT count(*) FROM pgtasks.tasks WHERE status = 'RUNNING'"
                )
                assert running == 0
            spent = await conn.fetchval(
                "SELECT count(*) FROM pgtasks.tasks WHERE retry_count > 0 OR status = 'FAILED'"
            )
            assert spent == 0
        finally:
            producing = False
            await feeder


# -- a claim whose answer was lost ------------------------------------------------------------

LOST_CLAIM = """
WITH made AS (
    SELECT pgtasks.submit_task('quick', max_retries => 0) FROM generate_series(1, 3)
)
SELECT count(*) FROM made
"""


async def _claim_behind_its_back(conn, w: Worker) -> None:
    """Stand-in for a claim that committed while its answer was lost: tasks RUNNING under
    the worker's registered id, with lease tokens it never saw. Submitted and claimed in
    one transaction, so the worker's own claims never see them claimable first."""
    async with conn.transaction():
        assert await conn.fetchval(LOST_CLAIM) == 3
        claimed = await conn.fetch(
            "SELECT id FROM pgtasks.claim_tasks(worker_id => $1, max_tasks => 3,"
            " lease => interval '600 seconds')",
            w.worker_id,
        )
        assert len(claimed) == 3


async def _all_ran_on_their_first_attempt(conn, w: Worker) -> None:
    # The lease is 600 s: waiting it out would fail this wait, and rescue would spend the
    # only attempt of these max_retries=0 tasks (FAILED).
    await wait_for(conn, "SELECT count(*) = 3 FROM pgtasks.tasks WHERE status = 'DONE'")
    spent = await conn.fetchval("SELECT sum(retry_count) FROM pgtasks.tasks")
    assert spent == 0 and w.stats.rescued == 0 and w.stats.succeeded == 3


async def test_tasks_a_failed_claim_left_under_the_worker_run_at_once_without_a_retry(dsn, conn):
    # The heartbeat's interval (a third of the 600 s lease) never comes during the test: the
    # hand-back is the one a failed claim asks for.
    async with worker(dsn, lease=600.0) as w:
        await _claim_behind_its_back(conn, w)
        assert w.producer is not None
        w.producer.on_claim_lost()  # what a claim that raises a connection error calls
        await _all_ran_on_their_first_attempt(conn, w)


async def test_a_heartbeat_hands_back_tasks_claimed_for_the_worker_that_it_does_not_run(dsn, conn):
    # No claim failed here (its answer went missing some other way): the heartbeat's own
    # reconcile finds them.
    async with worker(dsn, lease=600.0, heartbeat_interval=0.2) as w:
        await _claim_behind_its_back(conn, w)
        await _all_ran_on_their_first_attempt(conn, w)
