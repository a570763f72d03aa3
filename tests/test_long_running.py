"""Long-running multi-step tasks: checkpoints that survive crashes, sleeping without a
slot, coalesced progress, per-task logs, results you can wait for, and the CLI on top.

Counts come from the database (tables of tests/apps/long.py, task_steps, task_logs,
notifications), never from the code under test. Timeouts only bound a hung test.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from pgtasks import Client, TaskCancelled, TaskFailed, TaskNotFound, Worker
from pgtasks.context import FLUSH_INTERVAL, LOG_BATCH
from tests.apps.long import LONG_DDL, gate
from tests.conftest import ROOT, WorkerProcs, until, wait_for
from tests.fleet import StartWorker


@pytest.fixture
async def db(conn: asyncpg.Connection) -> asyncpg.Connection:
    await conn.execute(LONG_DDL)
    return conn


@pytest.fixture
async def start_worker(dsn: str) -> AsyncIterator[StartWorker]:
    """In-process workers (the test's own event loop), stopped at the end of the test."""
    started: list[tuple[Worker, asyncio.Task[None]]] = []

    async def start(**kw: Any) -> Worker:
        opts: dict[str, Any] = {"poll_interval": 0.1, "lease": 10.0, "shutdown_grace": 2.0}
        w = Worker(dsn, **(opts | kw))
        started.append((w, asyncio.create_task(w.run())))
        return w

    yield start
    for w, _ in started:
        w.stop()
    for _, t in started:
        await asyncio.wait_for(t, 30)


async def stage_runs(db: asyncpg.Connection, task_id: int) -> list[tuple[str, int, int]]:
    rows = await db.fetch(
        "SELECT stage, attempt, pid FROM long_stage_runs WHERE task_id = $1 ORDER BY at",
        task_id,
    )
    return [(r["stage"], r["attempt"], r["pid"]) for r in rows]


async def runs(db: asyncpg.Connection, task_id: int) -> list[tuple[str, int]]:
    rows = await db.fetch(
        "SELECT label, attempt FROM long_runs WHERE task_id = $1 ORDER BY at", task_id
    )
    return [(r["label"], r["attempt"]) for r in rows]


def expected_media(source: str) -> dict[str, Any]:
    """What examples/media_pipeline.py computes for `source` (its simulated outputs)."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    size = 1_000_000 + int(digest[:4], 16)
    return {
        "source": source,
        "bytes": size,
        "words": size // 997,
        "url": f"s3://transcripts/{digest}.txt",
    }


# -- checkpoints across a real crash -----------------------------------------------------


@pytest.mark.slow
async def test_kill_9_in_stage_2_resumes_at_stage_2_and_stage_1_ran_once(
    db: asyncpg.Connection, client: Client, spawn_worker: WorkerProcs
) -> None:
    source = "https://media.example.com/kill-9.mp4"
    task_id = await client.submit(
        "held_pipeline", {"source": source, "seconds_per_stage": 0.2, "chunks": 4}
    )
    args = ("--lease", "2", "--concurrency", "1", "--poll-interval", "0.2")
    first = spawn_worker.start(*args, app="tests/apps/long.py")
    await wait_for(
        db,
        "SELECT EXISTS (SELECT 1 FROM long_stage_runs WHERE task_id = $1 AND stage = 'transcribe')",
        task_id,
    )
    # Stage 1 is committed, stage 2 is running in attempt 1. Now the worker dies hard.
    steps = await db.fetch("SELECT name FROM pgtasks.task_steps WHERE task_id = $1", task_id)
    assert [r["name"] for r in steps] == ["fetch"]
    first.kill()
    first.wait(10)
    assert await db.fetchval("SELECT status FROM pgtasks.tasks WHERE id = $1", task_id) == (
        "RUNNING"
    )  # nobody told the database: only the lease can

    second = spawn_worker.start(*args, app="tests/apps/long.py")
    result = await client.wait(task_id, timeout=90)

    assert await stage_runs(db, task_id) == [
        ("fetch", 1, first.pid),
        ("transcribe", 1, first.pid),
        ("transcribe", 2, second.pid),  # resumed at stage 2, on the new worker
        ("store", 2, second.pid),
    ]
    assert result == expected_media(source) | {
        "attempts": {"fetch": 1, "transcribe": 2, "store": 2}
    }
    info = await client.get(task_id)
    assert (info.status, info.attempt, info.retries) == ("DONE", 2, "1/3")
    errors = await client.errors(task_id)
    assert [e["attempt"] for e in errors] == [1]
    assert "lease expired" in errors[0]["error"]
    # Log lines written before stage 1's checkpoint survived the crash with it.
    lines = [(x.attempt, x.message) for x in await client.logs(task_id)]
    assert sum(m.startswith("fetch: downloading") for _, m in lines) == 1
    assert (1, f"fetch: downloading {source}") in lines


async def test_failure_in_stage_3_is_retried_without_redoing_stages_1_and_2(
    db: asyncpg.Connection, client: Client, start_worker: StartWorker
) -> None:
    source = "https://media.example.com/fail-once.mp4"
    task_id = await client.submit(
        "counted_pipeline",
        {"source": source, "seconds_per_stage": 0.1, "chunks": 2, "fail_stage3_once": True},
    )
    await start_worker(concurrency=1)
    result = await client.wait(task_id, timeout=60)

    pid = os.getpid()
    assert await stage_runs(db, task_id) == [
        ("fetch", 1, pid),
        ("transcribe", 1, pid),
        ("store", 1, pid),
        ("store", 2, pid),
    ]
    assert result == expected_media(source) | {
        "attempts": {"fetch": 1, "transcribe": 1, "store": 2}
    }
    steps = await db.fetch(
        "SELECT name, attempt FROM pgtasks.task_steps WHERE task_id = $1 ORDER BY at", task_id
    )
    assert [(s["name"], s["attempt"]) for s in steps] == [
        ("fetch", 1),
        ("transcribe", 1),
        ("store", 2),
    ]
    errors = await client.errors(task_id)
    assert len(errors) == 1 and "StoreUnavailable" in errors[0]["error"]


async def test_steps_in_a_loop_resume_at_the_first_unfinished_one(
    db: asyncpg.Connection, client: Client, start_worker: StartWorker
) -> None:
    task_id = await client.submit("batches", {"n": 6, "fail_after": 2})
    await start_worker()
    assert await client.wait(task_id, timeout=60) == [0, 1, 4, 9, 16, 25]
    assert await runs(db, task_id) == [
        ("batch-0", 1),
        ("batch-1", 1),
        ("batch-2", 1),
        ("batch-3", 2),
        ("batch-4", 2),
        ("batch-5", 2),
    ]
    assert (
        await db.fetchval("SELECT count(*) FROM pgtasks.task_steps WHERE task_id = $1", task_id)
        == 6
    )


async def test_a_step_result_that_is_not_json_fails_the_task_clearly(
    client: Client, start_worker: StartWorker
) -> None:
    task_id = await client.submit("bad_step")
    await start_worker()
    with pytest.raises(TaskFailed) as failed:
        await client.wait(task_id, timeout=30)
    error = failed.value.error or ""
    assert "StepError" in error and "'makes-a-set'" in error and "not JSON" in error
    info = await client.get(task_id)
    # Retrying cannot fix a programming error: FAILED at once, no retry spent.
    assert (info.status, info.attempt, info.retries) == ("FAILED", 1, "0/3")


async def test_a_step_name_used_twice_in_one_run_is_an_error(
    client: Client, start_worker: StartWorker
) -> None:
    task_id = await client.submit("same_step_twice")
    await start_worker()
    with pytest.raises(TaskFailed, match="ran twice in one attempt"):
        await client.wait(task_id, timeout=30)


async def test_first_run_sees_a_step_result_as_a_resumed_run_will(
    db: asyncpg.Connection, client: Client, start_worker: StartWorker
) -> None:
    task_id = await client.submit("shapes")
    await start_worker()
    assert await client.wait(task_id, timeout=30) == {"pair": [1, 2], "7": "seven"}
    # Tuple -> list and int keys -> strings, on the first run already, not only after a crash.
    assert await runs(db, task_id) == [("shape list:str", 1), ("shape list:str", 2)]


# -- sleeping ----------------------------------------------------------------------------


@pytest.mark.slow
async def test_sleep_frees_the_slot_and_resumes_on_time_without_a_retry(
    db: asyncpg.Connection, client: Client, start_worker: StartWorker
) -> None:
    sleeper = await client.submit("sleeper", {"seconds": 3600}, priority=1)
    quick = await client.submit("quick")
    # Register the waits before the worker starts, so they are in place before either task
    # can finish. (claim_tasks locks FOR NO KEY UPDATE, so a wait registering while the
    # worker claims no longer makes it skip a task; tests/sql covers that.)
    waits = [asyncio.create_task(client.wait(t, timeout=60)) for t in (sleeper, quick)]
    await wait_for(db, "SELECT count(*) = 2 FROM pgtasks.task_waiters")
    worker = await start_worker(concurrency=1)

    assert await waits[1] == "quick"
    # Handed back until its wake time, an hour away on the database's clock: the claims
    # after it pass it by (never early), until the clock gets there.
    await wait_for(db, "SELECT status = 'COMMIT' FROM pgtasks.tasks WHERE id = $1", sleeper)
    claims = worker.stats.claim_calls
    await until(lambda: worker.stats.claim_calls > claims + 1, what="two more claims")
    handed_back = await db.fetchval(
        "SELECT t.status = 'COMMIT' AND t.run_at = (s.result->>'sleep_until')::timestamptz"
        " FROM pgtasks.tasks t JOIN pgtasks.task_steps s ON s.task_id = t.id"
        " WHERE t.id = $1 AND s.name = 'sleep#1'",
        sleeper,
    )
    assert handed_back
    await db.execute("SELECT pgtasks.advance_clock(interval '1 hour')")
    assert await waits[0] == {"before": 1, "after": 2}

    # The body ran twice; the step before the sleep once; the sleep was not taken again.
    assert await runs(db, sleeper) == [("body", 1), ("before", 1), ("body", 2), ("after", 2)]
    at = {
        (r["label"], r["attempt"]): r["at"]
        for r in await db.fetch("SELECT * FROM long_runs WHERE task_id = ANY($1)", [sleeper, quick])
    }
    # One slot: the quick task can only have run while the sleeper did not hold it.
    assert at[("before", 1)] < at[("quick", 1)] < at[("body", 2)]
    info = await client.get(sleeper)
    assert (info.status, info.retries) == ("DONE", "0/3")
    assert await client.errors(sleeper) == []
    assert [(e.from_status, e.to_status) for e in await client.history(sleeper)] == [
        (None, "PENDING"),
        ("PENDING", "RUNNING"),
        ("RUNNING", "COMMIT"),
        ("COMMIT", "RUNNING"),
        ("RUNNING", "DONE"),
    ]


async def test_a_sync_task_sleeps_the_same_way(
    db: asyncpg.Connection, client: Client, start_worker: StartWorker
) -> None:
    task_id = await client.submit("sync_sleeper", {"seconds": 3600})
    await start_worker(concurrency=1)
    await wait_for(db, "SELECT status = 'COMMIT' FROM pgtasks.tasks WHERE id = $1", task_id)
    await db.execute("SELECT pgtasks.advance_clock(interval '1 hour')")
    assert await client.wait(task_id, timeout=60) == {"before": 1, "after_attempt": 2}
    assert (await client.get(task_id)).retries == "0/3"


# -- progress ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["progress_storm", "sync_progress_storm"])
async def test_100k_progress_calls_make_a_bounded_number_of_writes_and_land_exactly(
    db: asyncpg.Connection, client: Client, start_worker: StartWorker, dsn: str, kind: str
) -> None:
    gate_name = f"storm-{uuid.uuid4().hex}"
    task_id = await client.submit(kind, {"n": 100_000, "total": 200_000, "gate": gate_name})
    loop = asyncio.get_running_loop()
    writes: list[float] = []  # every progress write NOTIFYs its watchers once
    listener = await asyncpg.connect(dsn)
    try:
        await listener.add_listener(
            "pgtasks_progress",
            lambda _c, _p, _ch, payload: (
                writes.append(loop.time()) if payload == str(task_id) else None
            ),
        )
        await listener.execute("SELECT pgtasks.watch_task($1)", task_id)
        await start_worker(concurrency=1)

        # The last of the 100,000 values lands while the task still runs (it now waits at
        # its gate and reports nothing more), without another call to push it out.
        await wait_for(
            db,
            "SELECT status = 'RUNNING' AND progress_current = 100000 "
            "AND progress_total = 200000 AND progress_message = 'item 100000' "
            "FROM pgtasks.tasks WHERE id = $1",
            task_id,
        )
        gate(gate_name).set()
        assert await client.wait(task_id, timeout=60) == 100_000
        await listener.execute("SELECT 1")  # deliver what is still in flight
    finally:
        await listener.close()

    # At most one write per FLUSH_INTERVAL: a rate bound from the observed span, not a
    # speed assertion; a slower machine only allows more writes.
    span = writes[-1] - writes[0]
    assert 1 <= len(writes) <= span / FLUSH_INTERVAL + 3, (len(writes), span)
    assert len(writes) < 100
    info = await client.get(task_id)
    assert info.status == "DONE"
    assert info.progress_message == "item 100000"
    assert info.progress_current == info.progress_total == 200_000  # DONE counts as complete


async def test_the_last_progress_lands_before_the_result(
    db: asyncpg.Connection, client: Client, start_worker: StartWorker
) -> None:
    task_id = await client.submit("progress_storm", {"n": 3_001, "total": 10_000})
    await start_worker()
    assert await client.wait(task_id, timeout=30) == 3_001
    row = await db.fetchrow("SELECT * FROM pgtasks.task_status WHERE id = $1", task_id)
    assert row["progress_message"] == "item 3001"


async def test_progress_out_of_bounds_is_refused(
    client: Client, start_worker: StartWorker, dsn: str
) -> None:
    from pgtasks import registry, task_register

    if "bad_progress" not in registry:

        @task_register("bad_progress", max_retries=0)
        async def bad_progress(ctx: Any, params: dict[str, Any]) -> None:
            await ctx.progress(11, 10)

    task_id = await client.submit("bad_progress")
    await start_worker()
    with pytest.raises(TaskFailed, match="out of bounds"):
        await client.wait(task_id, timeout=30)


# -- logs --------------------------------------------------------------------------------


async def test_logs_from_ctx_log_and_logging_are_stored_in_order_with_their_attempt(
    client: Client, start_worker: StartWorker
) -> None:
    task_id = await client.submit("chatty")
    await start_worker()
    assert await client.wait(task_id, timeout=30) == "ok"
    lines = await client.logs(task_id)
    got = [(x.attempt, x.level, x.logger, x.message.split("\n")[0]) for x in lines]
    assert got == [
        (1, "INFO", None, "ctx one, attempt 1"),
        (1, "INFO", "tests.long", "logging two 1"),
        (1, "WARNING", "tests.long", "from a step thread"),
        (1, "INFO", "tests.long", "from an async step"),
        (1, "DEBUG", None, "ctx three"),
        (1, "DEBUG", "tests.long", "logging four"),
        (1, "ERROR", "tests.long", "failing attempt 1"),
        # attempt 2 skips the completed steps, so their lines are not logged again
        (2, "INFO", None, "ctx one, attempt 2"),
        (2, "INFO", "tests.long", "logging two 2"),
        (2, "DEBUG", None, "ctx three"),
        (2, "DEBUG", "tests.long", "logging four"),
        (2, "ERROR", "tests.long", "caught"),
    ]
    assert "ZeroDivisionError" in lines[-1].message  # log.exception keeps the traceback
    assert [x.id for x in lines] == sorted(x.id for x in lines)
    assert [x.at for x in lines] == sorted(x.at for x in lines)


async def test_logs_of_a_sync_task_are_stored_in_order_with_their_attempt(
    client: Client, start_worker: StartWorker
) -> None:
    task_id = await client.submit("sync_chatty")
    await start_worker()
    assert await client.wait(task_id, timeout=30) == "ok"
    got = [(x.attempt, x.level, x.logger, x.message) for x in await client.logs(task_id)]
    assert got == [
        (1, "INFO", None, "ctx one, attempt 1"),
        (1, "INFO", "tests.long", "logging two 1"),
        (1, "WARNING", "tests.long", "from a step thread"),
        (1, "DEBUG", None, "ctx three"),
        (1, "DEBUG", "tests.long", "logging four"),
        (1, "ERROR", "tests.long", "failing attempt 1"),
        (2, "INFO", None, "ctx one, attempt 2"),
        (2, "INFO", "tests.long", "logging two 2"),
        (2, "DEBUG", None, "ctx three"),
        (2, "DEBUG", "tests.long", "logging four"),
    ]


@pytest.mark.parametrize("kind", ["log_flood", "sync_log_flood"])
async def test_log_lines_are_written_in_batches(
    db: asyncpg.Connection, client: Client, start_worker: StartWorker, kind: str
) -> None:
    n = 3_000
    task_id = await client.submit(kind, {"n": n})
    await start_worker()
    assert await client.wait(task_id, timeout=60) == n
    assert [x.message for x in await client.logs(task_id)] == [f"line {i}" for i in range(n)]
    # Rows inserted by one statement share their transaction id: count the round trips.
    batches = await db.fetchval(
        "SELECT count(DISTINCT xmin::text) FROM pgtasks.task_logs WHERE task_id = $1", task_id
    )
    ran_for = await db.fetchval(
        "SELECT extract(epoch FROM finished_at - started_at) FROM pgtasks.tasks WHERE id = $1",
        task_id,
    )
    # Full batches plus at most one timed flush per interval plus the final one.
    assert batches <= n / LOG_BATCH + float(ran_for) / FLUSH_INTERVAL + 3, (batches, ran_for)
    assert batches < 50


async def test_task_logging_reaches_the_task_log_whatever_handlers_the_host_installed(
    client: Client, start_worker: StartWorker
) -> None:
    """A host application (uvicorn, FastAPI, basicConfig) put a handler on the root logger
    before the worker started and left the root at WARNING: a task's INFO line on a
    logger without a level of its own still reaches the task log, and the host's handler
    prints what it printed before, no more."""
    from pgtasks import registry, task_register

    app_log = logging.getLogger("tests.host_app")
    if "host_app_logs" not in registry:

        @task_register("host_app_logs")
        async def host_app_logs(ctx: Any, params: dict[str, Any]) -> None:
            app_log.info("info from the task")

    root = logging.getLogger()
    out = io.StringIO()
    host = logging.StreamHandler(out)
    saved = root.level
    root.setLevel(logging.WARNING)
    root.addHandler(host)
    try:
        task_id = await client.submit("host_app_logs")
        await start_worker()
        assert await client.wait(task_id, timeout=30) is None
        app_log.info("info outside a task")
        app_log.warning("warning outside a task")
        lines = [(x.level, x.logger, x.message) for x in await client.logs(task_id)]
    finally:
        root.removeHandler(host)
        root.setLevel(saved)
    assert lines == [("INFO", "tests.host_app", "info from the task")]
    assert out.getvalue() == "warning outside a task\n"


async def test_the_worker_removes_its_log_handler_when_it_stops(dsn: str) -> None:
    """And the filter it put on the host's handlers, and the root level it lowered."""
    root = logging.getLogger()
    host = logging.StreamHandler(io.StringIO())
    saved = root.level
    root.setLevel(logging.WARNING)
    root.addHandler(host)
    try:
        before = list(root.handlers)
        w = Worker(dsn, poll_interval=0.1, burst=True)
        await asyncio.wait_for(w.run(), 30)
        assert root.handlers == before
        assert root.level == logging.WARNING and not host.filters
    finally:
        root.removeHandler(host)
        root.setLevel(saved)


# -- results -----------------------------------------------------------------------------


async def test_wait_returns_the_result_woken_by_notify(
    client: Client, start_worker: StartWorker
) -> None:
    task_id = await client.submit("answer", {"delay": 0.3, "echo": "hi"})
    await start_worker()
    # A 60 s poll interval: only the NOTIFY can end this wait within the 30 s timeout.
    result = await client.wait(task_id, timeout=30, poll_interval=60)
    assert result == {"answer": 42, "echo": "hi"}


async def test_wait_raises_task_failed_with_the_error(
    client: Client, start_worker: StartWorker
) -> None:
    task_id = await client.submit("kaput")
    await start_worker()
    with pytest.raises(TaskFailed) as failed:
        await client.wait(task_id, timeout=30)
    assert failed.value.task_id == task_id
    assert "kaput: the input cannot be processed" in (failed.value.error or "")


async def test_wait_raises_task_cancelled(
    db: asyncpg.Connection, client: Client, start_worker: StartWorker
) -> None:
    task_id = await client.submit("forever")
    await start_worker()
    waiting = asyncio.create_task(client.wait(task_id, timeout=30, poll_interval=60))
    await wait_for(db, "SELECT EXISTS (SELECT 1 FROM long_runs WHERE task_id = $1)", task_id)
    assert await client.cancel(task_id) == "RUNNING"
    with pytest.raises(TaskCancelled) as cancelled:
        await waiting
    assert cancelled.value.task_id == task_id


async def test_wait_times_out_cleanly(db: asyncpg.Connection, client: Client) -> None:
    task_id = await client.submit("answer")  # no worker: it stays PENDING
    with pytest.raises(TimeoutError, match=f"task {task_id} did not finish"):
        await client.wait(task_id, timeout=0.3)
    # The watcher registration is gone and the client still works.
    assert await db.fetchval("SELECT count(*) FROM pgtasks.task_waiters") == 0
    assert (await client.get(task_id)).status == "PENDING"
    with pytest.raises(TaskNotFound):
        await client.wait(10**9, timeout=1)


async def test_follow_sees_progress_live_through_notify(
    client: Client, start_worker: StartWorker
) -> None:
    task_id = await client.submit(
        "media_pipeline", {"seconds_per_stage": 0.4, "chunks": 4, "source": "live"}
    )
    await start_worker()
    seen = []
    async with asyncio.timeout(30):  # a 60 s poll: updates can only come from NOTIFY
        async for info, lines in client.follow(task_id, poll_interval=60):
            seen.append((info.status, info.progress_current, len(lines)))
    assert seen[-1][0] == "DONE"
    assert any(s == "RUNNING" and 0 < (cur or 0) < 12 for s, cur, _ in seen), seen
    assert sum(n for _, _, n in seen) >= 7  # all of its log lines, delivered as they came


# -- the CLI -----------------------------------------------------------------------------


async def cli(dsn: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pgtasks.cli", "--database-url", dsn, *args,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def watched(db: asyncpg.Connection, task_id: int, run: asyncio.Task[Any]) -> None:
    """Wait until the CLI `run` watches the task (pgtasks.watch_task, as follow() does).
    The timeout only bounds a hung test."""
    query = "SELECT EXISTS (SELECT 1 FROM pgtasks.task_waiters WHERE task_id = $1)"
    async with asyncio.timeout(60):
        while not await db.fetchval(query, task_id):
            assert not run.done(), f"the CLI ended before it watched the task: {run.result()}"
            await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_cli_watch_follows_a_running_task_to_its_result(
    db: asyncpg.Connection, client: Client, start_worker: StartWorker, dsn: str
) -> None:
    task_id = await client.submit(
        "media_pipeline", {"seconds_per_stage": 0.3, "chunks": 3, "source": "cli"}
    )
    watching = asyncio.create_task(cli(dsn, "watch", str(task_id), "--lines", "3"))
    await watched(db, task_id, watching)  # it starts while the task is still PENDING
    await start_worker()
    code, out, err = await watching
    assert code == 0, err
    assert "DONE" in out and "100.0%" in out
    assert expected_media("cli")["url"] in out
    assert "store: saved" in out  # the latest log lines are part of the view


@pytest.mark.slow
async def test_cli_watch_reports_a_failure_and_exits_1(
    client: Client, start_worker: StartWorker, dsn: str
) -> None:
    task_id = await client.submit("kaput")
    await start_worker()
    with pytest.raises(TaskFailed):
        await client.wait(task_id, timeout=30)
    code, out, _ = await cli(dsn, "watch", str(task_id))
    assert code == 1
    assert "FAILED" in out and "kaput: the input cannot be processed" in out


@pytest.mark.slow
async def test_cli_logs_and_logs_follow(
    db: asyncpg.Connection, client: Client, start_worker: StartWorker, dsn: str
) -> None:
    task_id = await client.submit("chatty")
    following = asyncio.create_task(cli(dsn, "logs", str(task_id), "--follow"))
    await watched(db, task_id, following)  # following before the first line is written
    await start_worker()
    code, followed, err = await following
    assert code == 0 and f"task {task_id} DONE" in err

    code, out, _ = await cli(dsn, "logs", str(task_id))
    assert code == 0
    assert out == followed  # --follow printed every line once, as they came
    lines = out.splitlines()
    assert "#1 INFO    ctx one, attempt 1" in lines[0]
    assert "#1 INFO    tests.long: logging two 1" in lines[1]
    assert any("#2 ERROR   tests.long: caught" in x for x in lines)
    assert any("ZeroDivisionError" in x for x in lines)

    code, _, err = await cli(dsn, "logs", "999999")
    assert code == 1 and "does not exist" in err


async def test_lines_the_database_cannot_hold_as_is_are_escaped_not_lost(
    client: Client, start_worker: StartWorker
) -> None:
    task_id = await client.submit("odd_lines")
    await start_worker()
    assert await client.wait(task_id, timeout=30) == "ok"
    assert [x.message for x in await client.logs(task_id)] == [
        "nul \\x00 here",
        "surrogate \\udc80 here",
        "after",
    ]


# -- the SQL side ------------------------------------------------------------------------


async def test_log_many_is_fenced_and_checks_its_arrays(db: asyncpg.Connection) -> None:
    task_id = await db.fetchval("SELECT pgtasks.submit_task('answer')")
    (claim,) = await db.fetch("SELECT * FROM pgtasks.claim_tasks('w1')")
    held = claim["lease_token"]
    n = await db.fetchval(
        "SELECT pgtasks.log_many($1, $2, ARRAY['info', NULL], ARRAY['a', 'b'], NULL, "
        "ARRAY['x', NULL])",
        task_id,
        held,
    )
    assert n == 2
    rows = await db.fetch(
        "SELECT attempt, level, message, logger FROM pgtasks.task_logs WHERE task_id = $1 "
        "ORDER BY id",
        task_id,
    )
    assert [tuple(r) for r in rows] == [(1, "INFO", "a", "x"), (1, "INFO", "b", None)]
    with pytest.raises(asyncpg.PostgresError) as stale:
        await db.execute(
            "SELECT pgtasks.log_many($1, $2, ARRAY['info'], ARRAY['late'])", task_id, "2"
        )
    assert stale.value.sqlstate == "PT002"
    with pytest.raises(asyncpg.PostgresError) as uneven:
        await db.execute(
            "SELECT pgtasks.log_many($1, $2, ARRAY['info'], ARRAY['a', 'b'])", task_id, held
        )
    assert uneven.value.sqlstate == "PT111"
    assert (
        await db.fetchval("SELECT count(*) FROM pgtasks.task_logs WHERE task_id = $1", task_id) == 2
    )


async def test_progress_notifies_only_while_someone_watches(
    db: asyncpg.Connection, dsn: str
) -> None:
    task_id = await db.fetchval("SELECT pgtasks.submit_task('answer')")
    (claim,) = await db.fetch("SELECT * FROM pgtasks.claim_tasks('w1')")
    held = claim["lease_token"]
    got: list[str] = []
    listener = await asyncpg.connect(dsn)
    try:
        await listener.add_listener("pgtasks_progress", lambda *a: got.append(a[3]))
        await db.execute("SELECT pgtasks.report_progress($1, $2, 1, 10)", task_id, held)
        await listener.execute("SELECT pgtasks.watch_task($1)", task_id)
        await db.execute("SELECT pgtasks.report_progress($1, $2, 2, 10)", task_id, held)
        await db.execute("SELECT pgtasks.log($1, $2, 'info', 'hello')", task_id, held)
        await listener.execute("SELECT pgtasks.unwatch_task($1)", task_id)
        await db.execute("SELECT pgtasks.report_progress($1, $2, 3, 10)", task_id, held)
        await listener.execute("SELECT 1")
    finally:
        await listener.close()
    assert got == [str(task_id), str(task_id)]  # the watched progress write and log line
