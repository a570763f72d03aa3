"""pgtasks driver for `make bench`.

Drives pgtasks through its normal public API, exactly as an application would: ``Client.submit``
for one task, ``Client.submit_many`` for a batch, and the ``Worker`` class in worker processes
(``Registry`` + ``task_register(..., into=registry)`` for the no-op task). The shared scenarios in
``bench/common.py`` do all the timing, so pgtasks is measured the same way as its peers.

On top of the peers' figures this module measures what the issue asks of pgtasks alone:

* ``enqueue_single_no_wakeup`` (with ``enqueue_single_paired``): the single-row enqueue with
  wake-ups switched off, and on, in alternating slices of one sample, to show what the
  LISTEN/NOTIFY wake-ups cost a submitter;
* ``latency_poll_p50_ms`` / ``latency_poll_p99_ms``: latency with LISTEN off, i.e. a worker
  that only polls (as behind PgBouncer in transaction mode);
* ``drain_1_history`` (with ``drain_1_history_fresh``): the 1-process drain in a database
  that already holds a large history (finished tasks plus tasks scheduled far in the future),
  each paired with a drain in an empty database run just before it, to show claims stay flat
  as the table grows;
* ``drain_N_c10`` and ``drain_default``: the drain at concurrency 10 and with no Worker
  setting at all;
* ``connections_per_worker`` (with ``drain_1_steps``): the most connections one worker holds
  at concurrency 200 while its tasks checkpoint, log and report progress;
* ``maxconn_*`` (:func:`run_maxconn`, on a server of its own with ``max_connections = 100``):
  10 such workers at concurrency 100, and the connections the server refused them.

Run alone: ``python -m bench.peer_pgtasks run --dsn postgresql://...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import inspect
import itertools
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from bench.common import (
    CONNECTIONS,
    COUNT,
    JOBS_PER_S,
    MS,
    BenchConfig,
    Figure,
    Peer,
    WorkerContext,
    drop_database,
    dsn_with_database,
    fresh_database,
    peer_main,
    run_suite,
    sample_connection_drains,
    sample_drain,
    sample_drain_detailed,
    sample_enqueue_single_interleaved,
    sample_latency,
    serve_until_stopped,
)
from pgtasks import Client as TaskClient
from pgtasks import Registry, Worker, task_register
from pgtasks.migrations import migrate_url

NAME = "pgtasks"
TASK = "bench_noop"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


#: Worker slots per process. No-op jobs finish in microseconds, so a process is limited by its
#: round trips, not by its slots: more slots mean bigger claim batches (a worker claims up to its
#: free slots in one statement) and bigger completion batches. 100 is what we recommend for
#: short I/O-bound tasks (`pgtasks worker --concurrency 100`); PgQueuer runs with no concurrency
#: limit. The report also shows pgtasks at concurrency 10 (drain_*_c10), whose claims are the
#: size of PgQueuer's batches.
CONCURRENCY = _env_int("BENCH_PGTASKS_CONCURRENCY", 100)
#: Poll interval of the LISTEN-off latency figure: the latency it measures is bounded by it.
POLL_INTERVAL_S = _env_float("BENCH_PGTASKS_POLL_INTERVAL", 0.1)


async def install(dsn: str) -> None:
    """Apply pgtasks' migrations (sql/0001_*, 0002_*, ...) to a fresh database."""
    await migrate_url(dsn)


#: Wake-ups off for every later session of the database, as a poll-only deployment does
#: (sql/0008: the setting pgtasks.wake_workers; the clients connect after it is set).
WAKEUPS_OFF = """
DO $$ BEGIN
    EXECUTE format('ALTER DATABASE %I SET pgtasks.wake_workers = off', current_database());
END $$;
"""


async def install_without_wakeups(dsn: str) -> None:
    """Migrations, then wake-ups switched off, as a poll-only deployment may do."""
    await install(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(WAKEUPS_OFF)
    finally:
        await conn.close()


#: drain_max_running: the bench queue limited to this many running tasks, far above what one
#: worker of CONCURRENCY runs, so the limit is never the bottleneck and the figure is the
#: cost of the limited claim path itself (issue 10: >= 80 % of drain_1).
MAX_RUNNING = 10 * CONCURRENCY


async def install_max_running(dsn: str) -> None:
    """Migrations, then max_running on the queue the bench tasks go to."""
    await install(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "SELECT pgtasks.configure_queue(queue => (SELECT default_queue FROM"
            " pgtasks.current_settings()), max_running => $1)",
            MAX_RUNNING,
        )
    finally:
        await conn.close()


# Outstanding = claimable (PENDING/COMMIT) that is ready now, plus RUNNING. Written as two counts
# so each walks its partial index (tasks_claimable; tasks_lease, whose predicate is exactly
# "RUNNING") instead of scanning a table that may hold a million finished tasks. Tasks scheduled
# in the future (the history scenario) are not outstanding: nobody waits for them.
OUTSTANDING_SQL = """
SELECT (SELECT count(*) FROM pgtasks.tasks
         WHERE status IN ('PENDING', 'COMMIT') AND run_at <= now())
     + (SELECT count(*) FROM pgtasks.tasks WHERE lease_expires_at IS NOT NULL)
"""


class PgTasksClient:
    """One enqueueing application: a ``pgtasks.Client`` as an application opens it."""

    def __init__(self, client: TaskClient) -> None:
        self._client = client

    @classmethod
    async def connect(cls, dsn: str) -> PgTasksClient:
        return cls(await TaskClient(dsn).connect())

    async def enqueue_one(self, seq: int) -> None:
        await self._client.submit(TASK, {"seq": seq})

    async def enqueue_many(self, seqs: Sequence[int]) -> None:
        await self._client.submit_many(TASK, [{"seq": s} for s in seqs])

    async def outstanding(self) -> int:
        return int(await self._client.pool.fetchval(OUTSTANDING_SQL))

    async def close(self) -> None:
        await self._client.close()


# --------------------------------------------------------------------------- worker side


def _add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    # Each option is passed to Worker only when given, so "no options" is Worker's defaults.
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--poll-interval", type=float)
    parser.add_argument("--no-listen", dest="listen", action="store_false")
    parser.add_argument("--job", choices=("noop", "steps"), default="noop")


async def _checkpoint(seq: int | None) -> int | None:
    return seq


async def serve(ctx: WorkerContext) -> None:
    """A normal pgtasks Worker whose only task type is a recorded job.

    ``--job noop`` does nothing; ``--job steps`` does what issue 8's connection figures ask
    for: one checkpoint (``ctx.step``), one log line (``ctx.log``) and one progress report
    (``ctx.progress``), each of which may need the database.
    """
    registry = Registry()
    recorder = ctx.recorder

    if ctx.args.job == "steps":

        @task_register(TASK, into=registry)
        async def steps(task: Any, params: dict[str, Any]) -> None:
            seq = params.get("seq")
            recorder.started(seq)
            await task.step("checkpoint", _checkpoint, seq)
            await task.log("info", "checkpoint stored")
            await task.progress(1, 1)
            recorder.finished()

    else:

        @task_register(TASK, into=registry)
        async def noop(_task: Any, params: dict[str, Any]) -> None:
            recorder.started(params.get("seq"))
            recorder.finished()

    options: dict[str, Any] = {}
    if ctx.args.concurrency is not None:
        options["concurrency"] = ctx.args.concurrency
    if ctx.args.poll_interval is not None:
        options["poll_interval"] = ctx.args.poll_interval
    if not ctx.args.listen:
        options["listen"] = False
    worker = Worker(ctx.dsn, registry=registry, **options)
    profile_dir = os.environ.get("BENCH_PGTASKS_PROFILE")
    profiler = cProfile.Profile() if profile_dir else None
    if profiler is not None:
        profiler.enable()
    task = await serve_until_stopped(ctx, worker.run())
    # The Worker's own graceful stop: no more claims, running tasks finish, results flushed.
    worker.stop()
    await task
    if profiler is not None and profile_dir:
        # A development aid (see bench/README.md): where a worker process spends its CPU.
        profiler.disable()
        profiler.dump_stats(os.path.join(profile_dir, f"{ctx.ready_file.stem}-{os.getpid()}.prof"))


def make_peer(
    *,
    install_fn: Callable[[str], Awaitable[None]] = install,
    listen: bool = True,
    concurrency: int | None = CONCURRENCY,
    job: str = "noop",
) -> Peer:
    """The pgtasks peer; ``concurrency=None`` leaves it (and everything else) at Worker's
    default."""
    args = ["--job", job]
    settings: dict[str, Any] = {"concurrency": concurrency or "default", "listen": listen}
    if concurrency is not None:
        args += ["--concurrency", str(concurrency)]
    if not listen:
        args += ["--no-listen", "--poll-interval", str(POLL_INTERVAL_S)]
        settings["poll_interval_s"] = POLL_INTERVAL_S
    return Peer(
        name=NAME,
        install=install_fn,
        connect=PgTasksClient.connect,
        worker_module="bench.peer_pgtasks",
        worker_args=tuple(args),
        settings=settings,
    )


def drain_variants() -> dict[str, tuple[Peer, int]]:
    """The drains compared with PgQueuer, by figure key: (pgtasks peer, worker processes).
    ``run`` measures the ones beyond the shared suite's; bench/head_to_head.py pairs each
    with PgQueuer."""
    return {
        "drain_default": (make_peer(concurrency=None), 1),
        "drain_1_c10": (make_peer(concurrency=10), 1),
        "drain_2_c10": (make_peer(concurrency=10), 2),
        "drain_1": (make_peer(), 1),
        "drain_2": (make_peer(), 2),
    }


# --------------------------------------------------------------------------- history


@dataclasses.dataclass(frozen=True)
class HistoryLoad:
    """How long loading the history took, for the log (never part of a figure)."""

    finished: int
    future: int
    seconds: float
    table_mb: float


# Each chunk goes through the state machine the way workers would move it, only set-based:
# submit_tasks (PENDING, with its insert triggers), then PENDING -> RUNNING with a lease and
# attempt 1, then RUNNING -> DONE with finished_at, each transition checked by the transition
# trigger and recorded in task_events by the per-statement history trigger. The ids of one
# chunk are contiguous (one INSERT, nobody else inserting), so the UPDATEs address them by range.
_SUBMIT_CHUNK = """
SELECT min(id), max(id) FROM pgtasks.submit_tasks(
    $1, ARRAY(SELECT jsonb_build_object('seq', -g) FROM generate_series($2::int, $3::int) g),
    run_at => now() + $4::interval) AS t(id)
"""
_CLAIM_CHUNK = """
UPDATE pgtasks.tasks
   SET status = 'RUNNING', worker_id = 'bench-history-loader', attempt = attempt + 1,
       started_at = now(), deadline = now() + timeout,
       lease_expires_at = least(now() + interval '1 hour', now() + timeout)
 WHERE id BETWEEN $1 AND $2 AND status = 'PENDING'
"""
_FINISH_CHUNK = """
UPDATE pgtasks.tasks
   SET status = 'DONE', finished_at = now(), worker_id = NULL, lease_expires_at = NULL,
       deadline = NULL
 WHERE id BETWEEN $1 AND $2 AND status = 'RUNNING' AND attempt = 1
"""
HISTORY_CHUNK = 100_000
NOW = timedelta(0)
#: Far enough ahead that no scheduled task becomes due during the benchmark.
FUTURE = timedelta(days=1)


async def load_history(
    dsn: str, finished: int, future: int, log: Callable[[str], None] | None = None
) -> HistoryLoad:
    """Fill an installed database with ``finished`` DONE tasks and ``future`` scheduled ones.

    The future tasks are the benchmark's own type in the same queue, due in a day: they sit in
    the claim index right behind the ready work, which is the case a claim must not slow down
    for. Ends with VACUUM ANALYZE, as autovacuum would have done by then in production.
    """
    started = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        done = 0
        while done < finished:
            n = min(HISTORY_CHUNK, finished - done)
            async with conn.transaction():
                lo, hi = await conn.fetchrow(_SUBMIT_CHUNK, TASK, -done - n, -done - 1, NOW)
                await conn.execute(_CLAIM_CHUNK, lo, hi)
                await conn.execute(_FINISH_CHUNK, lo, hi)
            done += n
            # Reclaim the dead PENDING/RUNNING versions before the next chunk, so the table
            # ends up the size a steadily vacuumed production table would have.
            await conn.execute("VACUUM pgtasks.tasks")
            if log is not None:
                log(f"[{NAME}] history: {done:,} finished tasks loaded")
        if future:
            offset = finished + 1
            await conn.fetchrow(_SUBMIT_CHUNK, TASK, -offset - future, -offset, FUTURE)
        await conn.execute("VACUUM ANALYZE pgtasks.tasks")
        await conn.execute("VACUUM ANALYZE pgtasks.task_events")
        size = await conn.fetchval("SELECT pg_total_relation_size('pgtasks.tasks')")
    finally:
        await conn.close()
    return HistoryLoad(finished, future, time.perf_counter() - started, size / 2**20)


_clone_counter = itertools.count(1)


@contextlib.asynccontextmanager
async def database_from_template(dsn: str, template: str) -> AsyncIterator[str]:
    """A fresh copy of database ``template`` for one run, dropped afterwards; yields its DSN.

    Loading a million tasks takes far longer than a drain, so the history is loaded once and
    every run gets its own byte-for-byte copy (FILE_COPY: a file copy, not WAL-logged block by
    block). Each run therefore starts from the same table, indexes, statistics and visibility
    map, as the other figures start from an empty database.

    The copy leaves hundreds of MB of dirty pages in the OS cache (and loading the history
    left a checkpoint's worth in PostgreSQL's); written back during the drain they would slow
    its commits. A production table that grew over weeks carries no such backlog, so both are
    flushed before the run (CHECKPOINT, then sync), outside the timed part.
    """
    name = f"{template}_run{next(_clone_counter)}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
        await admin.execute("CHECKPOINT")
    finally:
        await admin.close()
    await asyncio.to_thread(os.sync)
    try:
        yield dsn_with_database(dsn, name)
    finally:
        await drop_database(dsn, name)


async def _noop_install(_dsn: str) -> None:
    """The clone already holds the schema and the history."""


async def sample_history_drains(
    dsn: str, cfg: BenchConfig, log: Callable[[str], None]
) -> tuple[list[float], list[float]]:
    """(history drains, fresh drains): ``cfg.runs`` pairs of 1-process drains, each pair a
    drain in an empty database and then one in a fresh copy of one database with the history.

    The drop is judged per pair. drain_1 (early in the run) against these (minutes later)
    mixed the history's cost with the machine's drift: the same code measured 0-31 % apart.
    """
    peer = make_peer(install_fn=_noop_install)
    fresh_peer = make_peer()
    history: list[float] = []
    fresh: list[float] = []
    async with fresh_database(dsn, f"{NAME}_history") as template_dsn:
        await install(template_dsn)
        loaded = await load_history(template_dsn, cfg.history_finished, cfg.history_future, log)
        log(
            f"[{NAME}] history loaded: {loaded.finished:,} finished + {loaded.future:,} future "
            f"tasks in {loaded.seconds:.0f}s, pgtasks.tasks is {loaded.table_mb:,.0f} MB"
        )
        template = urlsplit(template_dsn).path.lstrip("/")
        for i in range(cfg.runs):
            async with database_from_template(dsn, template) as db:
                # The clone's CHECKPOINT and sync are behind us: the fresh drain of the pair
                # runs now, right before the history drain, under the same conditions.
                fresh.append(await sample_drain(fresh_peer, dsn, cfg, 1))
                # sample_drain wants a server DSN and makes its own fresh database; here the
                # database is the clone, so run the same scenario code against it directly.
                history.append(await _drain_in(peer, db, cfg))
            log(
                f"[{NAME}] drain_1_history pair {i + 1}: fresh {fresh[-1]:,.0f}, history "
                f"{history[-1]:,.0f} jobs/s (drop {(1 - history[-1] / fresh[-1]) * 100:.1f} %)"
            )
    return history, fresh


async def _drain_in(peer: Peer, db: str, cfg: BenchConfig) -> float:
    """``sample_drain`` with 1 worker, against an existing database instead of a new one."""

    @contextlib.asynccontextmanager
    async def this_database(_dsn: str, _system: str) -> AsyncIterator[str]:
        yield db

    return await sample_drain(peer, db, cfg, 1, database=this_database)


# --------------------------------------------------------------------------- suite


async def run_maxconn(
    dsn: str, cfg: BenchConfig, log: Callable[[str], None] | None = None
) -> dict[str, Figure]:
    """The ``maxconn_*`` figures, against a server started with ``max_connections =
    cfg.maxconn_limit``: ``maxconn_workers`` processes at ``maxconn_concurrency`` drain
    ``maxconn_jobs`` tasks that checkpoint, log and report progress.

    A refused connection does not fail the run: it is what the figures are there to count
    (``maxconn_connection_errors``, from the workers' logs). Jobs that failed for good are
    left out of the rate and logged; a run that does not finish within ``maxconn_timeout_s``
    has no rate (``maxconn_jobs_per_s`` is left out when no run finished).
    """
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    conn = await asyncpg.connect(dsn)
    try:
        limit = int(await conn.fetchval("SHOW max_connections"))
    finally:
        await conn.close()
    if limit != cfg.maxconn_limit:
        raise RuntimeError(f"server has max_connections = {limit}, not {cfg.maxconn_limit}")
    peer = make_peer(concurrency=cfg.maxconn_concurrency, job="steps")
    rates: list[float] = []
    errors: list[float] = []
    peaks: list[float] = []
    for i in range(cfg.maxconn_runs):
        sample = await sample_drain_detailed(
            peer,
            dsn,
            dataclasses.replace(cfg, timeout_s=cfg.maxconn_timeout_s),
            cfg.maxconn_workers,
            jobs=cfg.maxconn_jobs,
            watch_connections=True,
            strict=False,
        )
        assert sample.peak_server_connections is not None
        errors.append(sample.connection_errors)
        peaks.append(sample.peak_server_connections)
        if sample.rate is None:
            outcome = f"did not finish within {cfg.maxconn_timeout_s:.0f}s"
        else:
            rates.append(sample.rate)
            outcome = f"{sample.done:,} of {cfg.maxconn_jobs:,} jobs ran, {sample.rate:,.0f} jobs/s"
        say(
            f"[{NAME}] maxconn run {i + 1}: {cfg.maxconn_workers} workers x concurrency "
            f"{cfg.maxconn_concurrency}, max_connections {limit}: {outcome}, "
            f"{errors[-1]:.0f} connection errors, peak {peaks[-1]:.0f} connections"
        )
    figures = {
        "maxconn_connection_errors": Figure.of(errors, COUNT),
        "maxconn_peak_connections": Figure.of(peaks, CONNECTIONS),
    }
    if rates:  # none when no run finished
        figures["maxconn_jobs_per_s"] = Figure.of(rates, JOBS_PER_S)
    return figures


async def run(
    dsn: str, cfg: BenchConfig, log: Callable[[str], None] | None = None
) -> dict[str, Figure]:
    """Every figure for pgtasks against the server at ``dsn`` (one fresh database per run).

    The ``maxconn_*`` figures need a server of their own: see :func:`run_maxconn`.
    """
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    figures = await run_suite(dsn, cfg, make_peer(), log=say)

    # The same drain with other Worker settings: concurrency 10 (a claim the size of
    # PgQueuer's batch of 10) and no settings at all (whatever Worker's defaults are); and
    # drain_1 on a queue with a max_running limit that is never reached (flow control's cost).
    variants = drain_variants()
    for key, (peer, workers) in (
        *((k, variants[k]) for k in ("drain_1_c10", "drain_2_c10", "drain_default")),
        ("drain_max_running", (make_peer(install_fn=install_max_running), 1)),
    ):
        samples = []
        for i in range(cfg.runs):
            samples.append(await sample_drain(peer, dsn, cfg, workers))
            say(f"[{NAME}] {key} run {i + 1}: {samples[-1]:,.0f} jobs/s")
        figures[key] = Figure.of(samples, JOBS_PER_S)
    # Tasks that checkpoint, log and report progress, at a high concurrency: how many
    # connections does one worker process hold?
    steps = make_peer(concurrency=cfg.connections_concurrency, job="steps")
    figures.update(
        await sample_connection_drains(
            steps, dsn, cfg, "drain_1_steps", say, jobs=cfg.connections_jobs
        )
    )

    # Wake-ups on vs off: each pair in two databases, measured in alternating slices, so that
    # drift in the machine's load (two shared cores) falls on both sides of the ratio alike.
    paired_on: list[float] = []
    no_wakeup: list[float] = []
    for i in range(cfg.runs):
        on, off = await sample_enqueue_single_interleaved(
            make_peer(), make_peer(install_fn=install_without_wakeups), dsn, cfg
        )
        paired_on.append(on)
        no_wakeup.append(off)
        say(
            f"[{NAME}] enqueue_single pair {i + 1}: wake-ups on {on:,.0f}, off {off:,.0f} "
            f"jobs/s ({on / off:.2f})"
        )
    figures["enqueue_single_paired"] = Figure.of(paired_on, JOBS_PER_S)
    figures["enqueue_single_no_wakeup"] = Figure.of(no_wakeup, JOBS_PER_S)

    p50: list[float] = []
    p99: list[float] = []
    for i in range(cfg.runs):
        a, b = await sample_latency(make_peer(listen=False), dsn, cfg)
        p50.append(a)
        p99.append(b)
        say(f"[{NAME}] latency_poll run {i + 1}: p50 {a:.1f} ms, p99 {b:.1f} ms")
    figures["latency_poll_p50_ms"] = Figure.of(p50, MS)
    figures["latency_poll_p99_ms"] = Figure.of(p99, MS)

    if cfg.history_finished or cfg.history_future:
        history, fresh = await sample_history_drains(dsn, cfg, say)
        figures["drain_1_history"] = Figure.of(history, JOBS_PER_S)
        figures["drain_1_history_fresh"] = Figure.of(fresh, JOBS_PER_S)

    # Workflows (issue 12): a chord's children against the plain drain, the callback's
    # start, a chain's hand-off, and what plain drains pay for workflows (bench/workflows.py).
    from bench import workflows

    figures.update(await workflows.run(dsn, cfg, say))
    figures.update(await workflows.run_ab(dsn, cfg, say))
    return figures


def _worker_default(name: str) -> Any:
    """A Worker constructor default, for the report (None if Worker has no such argument)."""
    param = inspect.signature(Worker).parameters.get(name)
    return None if param is None else param.default


def settings() -> dict[str, Any]:
    """What the report prints next to pgtasks' figures."""
    return {
        "concurrency": CONCURRENCY,
        "concurrency (drain_default)": _worker_default("concurrency"),
        "concurrency (connections_per_worker)": BenchConfig().connections_concurrency,
        "listen": True,
        "poll_interval_s (latency_poll)": POLL_INTERVAL_S,
        "client": "pgtasks.Client (asyncpg pool)",
    }


if __name__ == "__main__":
    # Re-import under the real module name so the worker's objects live in bench.peer_pgtasks.
    from bench import peer_pgtasks as _driver

    sys.exit(
        peer_main(
            sys.argv[1:],
            name="peer_pgtasks",
            run=_driver.run,
            serve=_driver.serve,
            add_worker_arguments=_driver._add_worker_arguments,
        )
    )
