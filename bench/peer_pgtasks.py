"""pgtasks driver, and the figures only pgtasks has (bench/README.md says what each times).

pgtasks is driven through its public API, as an application would: ``Client.submit`` and
``Client.submit_many``, the ``Worker`` class in worker processes with the no-op task in a
``Registry`` of its own. :func:`run` measures every figure but ``maxconn_*``
(:func:`run_maxconn`, a server of its own); ``make_peer(tree=...)`` is another revision.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import inspect
import itertools
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from bench.harness import (
    CONNECTIONS,
    COUNT,
    JOBS_PER_S,
    BenchConfig,
    Client,
    DrainSample,
    Figure,
    Log,
    Peer,
    WorkerContext,
    admin_execute,
    fresh_database,
    p50_p99,
    run_suite,
    sample_connection_drains,
    sample_drain,
    sample_enqueue_single_interleaved,
    sample_latency,
    serve_until_stopped,
    server_settings,
    tree_env,
    with_database,
    worker_main,
)
from bench.harness import (
    figures as to_figures,
)
from pgtasks import Client as TaskClient
from pgtasks import Registry, Worker, task_register
from pgtasks.migrations import migrate_url

NAME = "pgtasks"
TASK = "bench_noop"

#: Worker slots per process. No-op jobs finish in microseconds, so a process is bound by its
#: round trips, not its slots: more slots mean bigger claims (a worker claims up to its free
#: slots in one statement) and bigger completion batches. 100 is what we recommend for short
#: I/O-bound tasks (`pgtasks worker --concurrency 100`). Override: BENCH_PGTASKS_CONCURRENCY.
CONCURRENCY = int(os.environ.get("BENCH_PGTASKS_CONCURRENCY") or 100)
#: Poll interval of the LISTEN-off latency figure, which it bounds.
POLL_INTERVAL_S = float(os.environ.get("BENCH_PGTASKS_POLL_INTERVAL") or 0.1)
#: drain_max_running's limit: far above what one worker runs, so the limit is never what
#: holds the drain back and the figure is the cost of the limited claim path itself.
MAX_RUNNING = 10 * CONCURRENCY


async def install(dsn: str) -> None:
    await migrate_url(dsn)


#: Setups run after the schema: wake-ups off for every later session of the database, as a
#: poll-only deployment may set it (the clients connect after it); MAX_RUNNING on the queue
#: the bench tasks go to.
NO_WAKEUPS = """
DO $$ BEGIN
    EXECUTE format('ALTER DATABASE %I SET pgtasks.wake_workers = off', current_database());
END $$"""


def parked(first: int, last: int, event: str) -> str:
    """Setup SQL: tasks of the bench's type carrying seqs ``first``..``last``, each parked on
    a wait for ``event`` (a day at most), as a worker's first attempt would leave them."""
    return f"""DO $$ BEGIN
    PERFORM pgtasks.submit_tasks('{TASK}', ARRAY(SELECT jsonb_build_object('seq', g)
                                                  FROM generate_series({first}, {last}) g));
    PERFORM pgtasks.wait_for_event(c.id, c.lease_token, '{event}', interval '1 day')
       FROM pgtasks.claim_tasks('bench-setup', NULL, {last - first + 1}, NULL, ARRAY['{TASK}']) c;
END $$"""


#: drain_1_waiting: this many tasks of the drained type waiting for an event that never
#: comes, as long-running tasks waiting for approvals would.
WAITING_TASKS = 10_000
LIMITED = f"""
SELECT pgtasks.configure_queue(queue => (SELECT default_queue FROM pgtasks.current_settings()),
                               max_running => {MAX_RUNNING})"""
#: The schema as revision ``tree`` installs it: its own migrate, in a child process that
#: imports that checkout (this one imports the working tree's pgtasks).
_MIGRATE = """import asyncio, sys
from pgtasks.migrations import migrate_url
asyncio.run(migrate_url(sys.argv[1]))"""
#: That revision's own Client.submit_many, one batch per line of stdin, "ok" after each.
_SUBMITTER = """import asyncio, json, sys
from pgtasks import Client
async def main():
    client = await Client(sys.argv[1]).connect()
    for line in sys.stdin:
        await client.submit_many(sys.argv[2], [{"seq": s} for s in json.loads(line)])
        print("ok", flush=True)
    await client.close()
asyncio.run(main())"""


def _installer(tree: Path | None, setup: str) -> Callable[[str], Awaitable[None]]:
    async def install_fn(dsn: str) -> None:
        if tree is None:
            await install(dsn)
        else:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _MIGRATE, dsn, cwd=tree, env=tree_env(tree)
            )
            if await proc.wait():
                raise RuntimeError(f"the migrate of {tree} failed (exit {proc.returncode})")
        if setup:
            await admin_execute(dsn, setup)

    return install_fn


# Outstanding = claimable (PENDING/COMMIT) and ready now, plus RUNNING: two counts, so each
# walks its partial index (tasks_claimable; tasks_lease, whose predicate is exactly RUNNING)
# instead of scanning a table that may hold a million finished tasks. Tasks scheduled in the
# future (the history scenario) are not outstanding: nobody waits for them.
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


class EventClient(PgTasksClient):
    """For event_latency_*: enqueueing ``seq`` sends ``go`` to the task :func:`parked` left
    waiting with that seq, so :func:`sample_latency` times ``send_event`` to the task's code
    running again. The parked tasks' ids follow their seqs."""

    first = 0

    @classmethod
    async def connect(cls, dsn: str) -> EventClient:
        client = cls(await TaskClient(dsn).connect())
        lowest = "SELECT min(id) - min((params->>'seq')::bigint) FROM pgtasks.tasks"
        client.first = int(await client._client.pool.fetchval(lowest))
        return client

    async def enqueue_one(self, seq: int) -> None:
        await self._client.send_event(self.first + seq, "go")


class RevisionClient:
    """The client of pgtasks at another revision: :data:`_SUBMITTER` in a child process that
    imports that checkout, up until :meth:`close`, so its exit never falls in a drain."""

    def __init__(self, proc: asyncio.subprocess.Process, conn: asyncpg.Connection) -> None:
        self._proc, self._conn = proc, conn

    @classmethod
    async def connect(cls, tree: Path, dsn: str) -> RevisionClient:
        pipe = asyncio.subprocess.PIPE
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-c", _SUBMITTER, dsn, TASK), cwd=tree, env=tree_env(tree),
            stdin=pipe, stdout=pipe,
        )  # fmt: skip
        return cls(proc, await asyncpg.connect(dsn))

    async def enqueue_one(self, seq: int) -> None:
        await self.enqueue_many([seq])

    async def enqueue_many(self, seqs: Sequence[int]) -> None:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps(list(seqs)).encode() + b"\n")
        await self._proc.stdin.drain()
        if await self._proc.stdout.readline() != b"ok\n":
            raise RuntimeError(f"the submitter failed (exit {await self._proc.wait()})")

    async def outstanding(self) -> int:
        return int(await self._conn.fetchval(OUTSTANDING_SQL))

    async def close(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        await self._proc.wait()
        await self._conn.close()


# --------------------------------------------------------------------------- worker side


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    # Each option reaches Worker only when given (SUPPRESS), so "no options" is its defaults.
    unset = argparse.SUPPRESS
    parser.add_argument("--concurrency", type=int, default=unset)
    parser.add_argument("--poll-interval", type=float, default=unset)
    parser.add_argument("--no-listen", dest="listen", action="store_false", default=unset)
    parser.add_argument("--job", choices=("noop", "steps", "event"), default="noop")
    parser.add_argument("--no-otel", action="store_true")  # read by bench/__init__.py


async def _checkpoint(seq: int | None) -> int | None:
    return seq


async def serve(ctx: WorkerContext) -> None:
    """A normal pgtasks Worker whose only task type is a recorded job: ``--job noop`` does
    nothing, ``--job steps`` stores a checkpoint, a log line and a progress report, each of
    which may need the database, ``--job event`` waits for the event ``go`` (holding nothing)
    and records its start when it has it."""
    registry = Registry()
    recorder = ctx.recorder

    if ctx.args.job == "steps":

        @task_register(TASK, into=registry)
        async def steps(task: Any, params: dict[str, Any]) -> None:
            recorder.started(params.get("seq"))
            await task.step("checkpoint", _checkpoint, params.get("seq"))
            await task.log("info", "checkpoint stored")
            await task.progress(1, 1)
            recorder.finished()

    else:
        event = ctx.args.job == "event"

        @task_register(TASK, into=registry)
        async def noop(task: Any, params: dict[str, Any]) -> None:
            if event:  # parked by parked(), sent its event by EventClient: returns at once
                await task.wait_for_event("go")
            recorder.started(params.get("seq"))
            recorder.finished()

    given = vars(ctx.args).items()
    options = {k: v for k, v in given if k in ("concurrency", "poll_interval", "listen")}
    worker = Worker(ctx.dsn, registry=registry, **options)
    task = await serve_until_stopped(ctx, worker.run())
    # The Worker's own graceful stop: no more claims, running tasks finish, results flushed.
    worker.stop()
    await task


def make_peer(
    *,
    tree: Path | None = None,
    name: str = NAME,
    setup: str = "",
    install_fn: Callable[[str], Awaitable[None]] | None = None,
    listen: bool = True,
    concurrency: int | None = CONCURRENCY,
    job: str = "noop",
    otel: bool = True,
) -> Peer:
    """The pgtasks peer; ``concurrency=None`` leaves it, like every option, at Worker's default.
    ``tree``: another revision's checkout, whose pgtasks the client, the schema (its own
    migrate) and the workers use, as system ``name``. ``setup``: SQL run after the schema."""
    args = ["--job", job, *([] if otel else ["--no-otel"])]
    if concurrency is not None:
        args += ["--concurrency", str(concurrency)]
    if not listen:
        args += ["--no-listen", "--poll-interval", str(POLL_INTERVAL_S)]
    connect: Callable[[str], Awaitable[Client]] = PgTasksClient.connect
    if tree is not None:
        connect = functools.partial(RevisionClient.connect, tree)
    install_fn = install_fn or _installer(tree, setup)
    return Peer(name, install_fn, connect, "bench.peer_pgtasks", tuple(args), tree)


#: Drains whose match PgQueuer runs in the head-to-head rounds: batch 10, or ``run()`` with
#: no argument for ``drain_default``.
PGQUEUER_MATCHED = ("drain_default", "drain_1_c10", "drain_2_c10", "drain_1", "drain_2")


def drain_variants(cfg: BenchConfig, **peer: Any) -> dict[str, tuple[Peer, int, int]]:
    """Every drain figure's setup, by key: (peer, worker processes, jobs); ``peer`` goes to
    :func:`make_peer` (another revision's tree)."""
    jobs = cfg.drain_jobs
    steps = make_peer(concurrency=cfg.connections_concurrency, job="steps", **peer)
    return {
        "drain_default": (make_peer(concurrency=None, **peer), 1, jobs),
        "drain_1_c10": (make_peer(concurrency=10, **peer), 1, jobs),
        "drain_2_c10": (make_peer(concurrency=10, **peer), 2, jobs),
        "drain_1": (make_peer(**peer), 1, jobs),
        "drain_2": (make_peer(**peer), 2, jobs),
        "drain_max_running": (make_peer(setup=LIMITED, **peer), 1, jobs),
        "drain_1_steps": (steps, 1, cfg.connections_jobs),
    }


# --------------------------------------------------------------------------- history

# Each chunk goes through the state machine the way workers would move it, only set-based:
# submit_tasks (PENDING, with its insert triggers), then PENDING -> RUNNING with a lease and
# attempt 1, then RUNNING -> DONE, each transition checked by the transition trigger and
# recorded in task_events by the history trigger. A chunk's ids are contiguous (one INSERT,
# nobody else inserting), so the UPDATEs address them by range. Tokens are placeholders.
_SUBMIT_CHUNK = """
SELECT min(id), max(id) FROM pgtasks.submit_tasks(
    $1, ARRAY(SELECT jsonb_build_object('seq', -g) FROM generate_series($2::int, $3::int) g),
    run_at => now() + $4::interval) AS t(id)
"""
_CLAIM_CHUNK = """
UPDATE pgtasks.tasks
   SET status = 'RUNNING', worker_id = 'bench-history-loader', attempt = attempt + 1,
       started_at = now(), deadline = now() + timeout,
       lease_expires_at = least(now() + interval '1 hour', now() + timeout),
       lease_token = md5(id::text)
 WHERE id BETWEEN $1 AND $2 AND status = 'PENDING'
"""
_FINISH_CHUNK = """
UPDATE pgtasks.tasks
   SET status = 'DONE', finished_at = now(), worker_id = NULL, lease_expires_at = NULL,
       deadline = NULL, lease_token = NULL
 WHERE id BETWEEN $1 AND $2 AND status = 'RUNNING' AND attempt = 1
"""
HISTORY_CHUNK = 100_000


async def load_history(dsn: str, finished: int, future: int, say: Log) -> None:
    """Fill an installed database with ``finished`` DONE tasks and ``future`` tasks due in a
    day: the bench's own type in the same queue, so they sit in the claim index right behind
    the ready work, the case a claim must not slow down for. Ends with VACUUM ANALYZE, as
    autovacuum would have done by then in production."""
    started = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        done = 0
        while done < finished:
            n = min(HISTORY_CHUNK, finished - done)
            async with conn.transaction():
                lo, hi = await conn.fetchrow(
                    _SUBMIT_CHUNK, TASK, -done - n, -done - 1, timedelta(0)
                )
                await conn.execute(_CLAIM_CHUNK, lo, hi)
                await conn.execute(_FINISH_CHUNK, lo, hi)
            done += n
            # Reclaim the dead PENDING and RUNNING versions before the next chunk, so the
            # table ends up the size a steadily vacuumed one would be.
            await conn.execute("VACUUM pgtasks.tasks")
        if future:
            first = finished + 1
            await conn.fetchrow(_SUBMIT_CHUNK, TASK, -first - future, -first, timedelta(days=1))
        await conn.execute("VACUUM ANALYZE pgtasks.tasks")
        await conn.execute("VACUUM ANALYZE pgtasks.task_events")
        size = await conn.fetchval("SELECT pg_total_relation_size('pgtasks.tasks')")
    finally:
        await conn.close()
    say(
        f"[{NAME}] history: {finished:,} finished + {future:,} future tasks loaded in "
        f"{time.perf_counter() - started:.0f}s, pgtasks.tasks is {size / 2**20:,.0f} MB"
    )


_clone_counter = itertools.count(1)


@contextlib.asynccontextmanager
async def clone_database(dsn: str, template: str) -> AsyncIterator[str]:
    """A byte-for-byte copy of database ``template`` (FILE_COPY), dropped afterwards: the
    history is loaded once, and every run gets the same table, indexes, statistics and
    visibility map. The copy's dirty pages (and the load's) are flushed first (CHECKPOINT,
    sync), outside the timed part: written back during the drain they slowed its commits, a
    32 % drop that a table grown over weeks does not suffer."""
    name = f"{template}_run{next(_clone_counter)}"
    await admin_execute(
        dsn, f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY', "CHECKPOINT"
    )
    await asyncio.to_thread(os.sync)
    try:
        yield with_database(dsn, name)
    finally:
        await admin_execute(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def sample_history_drains(
    dsn: str, cfg: BenchConfig, say: Log
) -> tuple[list[float], list[float]]:
    """(history drains, fresh drains): ``runs`` pairs of one-process drains, the fresh one in
    an empty database run right before the one in a copy holding the history, after the
    copy's flush. The drop is judged per pair: against drain_1, measured minutes earlier, the
    machine's drift alone moved it between 0 and 31 % on the same code."""
    history: list[float] = []
    fresh: list[float] = []
    async with fresh_database(dsn, f"{NAME}_history") as template_dsn:
        await install(template_dsn)
        await load_history(template_dsn, cfg.history_finished, cfg.history_future, say)
        template = urlsplit(template_dsn).path.lstrip("/")
        for i in range(cfg.runs):
            async with clone_database(dsn, template) as db:
                fresh.append(_rate(await sample_drain(make_peer(), dsn, cfg, 1)))

                @contextlib.asynccontextmanager
                async def the_clone(_dsn: str, _system: str, db: str = db) -> AsyncIterator[str]:
                    yield db

                peer = make_peer(install_fn=lambda _: asyncio.sleep(0))  # a clone holds it
                history.append(_rate(await sample_drain(peer, db, cfg, 1, database=the_clone)))
            say(
                f"[{NAME}] drain_1_history pair {i + 1}: fresh {fresh[-1]:,.0f}, history "
                f"{history[-1]:,.0f} jobs/s (drop {(1 - history[-1] / fresh[-1]) * 100:.1f} %)"
            )
    return history, fresh


def _rate(sample: DrainSample) -> float:
    assert sample.rate is not None  # a strict drain finishes or raises
    return float(sample.rate)


# --------------------------------------------------------------------------- figures


async def run_maxconn(dsn: str, cfg: BenchConfig, say: Log) -> dict[str, Figure]:
    """``maxconn_*``, on a server with ``max_connections = maxconn_limit``: ``maxconn_workers``
    processes at ``maxconn_concurrency`` drain ``maxconn_jobs`` tasks that checkpoint, log and
    report progress. A refused connection (counted from the workers' logs) does not fail the
    run; one that does not finish within ``maxconn_timeout_s`` has no rate, but its errors
    and peak count."""
    if (limit := int((await server_settings(dsn))["max_connections"])) != cfg.maxconn_limit:
        raise RuntimeError(f"server has max_connections = {limit}, not {cfg.maxconn_limit}")
    peer = make_peer(concurrency=cfg.maxconn_concurrency, job="steps")
    bounded = dataclasses.replace(cfg, timeout_s=cfg.maxconn_timeout_s)
    rates: list[float] = []
    errors: list[float] = []
    peaks: list[float] = []
    for i in range(cfg.maxconn_runs):
        n, jobs = cfg.maxconn_workers, cfg.maxconn_jobs
        s = await sample_drain(
            peer, dsn, bounded, n, jobs=jobs, watch_connections=True, strict=False
        )
        assert s.peak_server_connections is not None
        errors.append(s.connection_errors)
        peaks.append(s.peak_server_connections)
        outcome = f"did not finish within {cfg.maxconn_timeout_s:.0f}s"
        if s.rate is not None:
            rates.append(s.rate)
            outcome = f"{s.done:,} of {cfg.maxconn_jobs:,} jobs ran, {s.rate:,.0f} jobs/s"
        say(
            f"[{NAME}] maxconn run {i + 1}: {cfg.maxconn_workers} workers x concurrency "
            f"{cfg.maxconn_concurrency}, max_connections {limit}: {outcome}, "
            f"{errors[-1]:.0f} connection errors, peak {peaks[-1]:.0f} connections"
        )
    figures = {
        "maxconn_connection_errors": Figure.of(errors, COUNT),
        "maxconn_peak_connections": Figure.of(peaks, CONNECTIONS),
    }
    if rates:
        figures["maxconn_jobs_per_s"] = Figure.of(rates, JOBS_PER_S)
    return figures


async def run(dsn: str, cfg: BenchConfig, say: Log) -> dict[str, Figure]:
    """Every pgtasks figure against the server at ``dsn`` except ``maxconn_*``, which needs a
    server of its own (:func:`run_maxconn`)."""
    figures = await run_suite(dsn, cfg, make_peer(), say)

    variants = drain_variants(cfg)
    for key in ("drain_1_c10", "drain_2_c10", "drain_default", "drain_max_running"):
        peer, processes, _ = variants[key]
        samples = []
        for i in range(cfg.runs):
            samples.append(_rate(await sample_drain(peer, dsn, cfg, processes)))
            say(f"[{NAME}] {key} run {i + 1}: {samples[-1]:,.0f} jobs/s")
        figures[key] = Figure.of(samples, JOBS_PER_S)
    steps, _, jobs = variants["drain_1_steps"]
    figures.update(await sample_connection_drains(steps, dsn, cfg, "drain_1_steps", say, jobs))

    pairs: dict[str, list[float]] = {}
    first = -cfg.latency_warmup
    events = make_peer(job="event", setup=parked(first, cfg.latency_jobs - 1, "go"))
    events = dataclasses.replace(events, connect=EventClient.connect)
    parked_ = parked(1, WAITING_TASKS, "never")
    paired = {"drain_1_waiting": make_peer(setup=parked_), "drain_1_waiting_plain": make_peer()}
    paired["drain_1_no_otel"] = make_peer(otel=False)  # against the plain one, OTel API present
    for i in range(cfg.runs):
        wakeups = (make_peer(), make_peer(setup=NO_WAKEUPS))
        on, off = await sample_enqueue_single_interleaved(*wakeups, dsn, cfg)
        p50, p99 = p50_p99(await sample_latency(make_peer(listen=False), dsn, cfg))
        e50, e99 = p50_p99(await sample_latency(events, dsn, cfg))
        got = {"enqueue_single_paired": on, "enqueue_single_no_wakeup": off}
        got |= {"latency_poll_p50_ms": p50, "latency_poll_p99_ms": p99}
        got |= {"event_latency_p50_ms": e50, "event_latency_p99_ms": e99}
        # drain_1 beside WAITING_TASKS waiting ones, and without the OTel package, each
        # against a plain one in the same round, the order flipped
        for key in sorted(paired, reverse=i % 2 == 1):
            got[key] = _rate(await sample_drain(paired[key], dsn, cfg, 1))
        for key, v in got.items():
            pairs.setdefault(key, []).append(v)
        say(
            f"[{NAME}] run {i + 1}: wake-ups on {on:,.0f}, off {off:,.0f} jobs/s "
            f"({on / off:.2f}); latency_poll p50 {p50:.1f}, p99 {p99:.1f} ms; event p50 "
            f"{e50:.1f}, p99 {e99:.1f} ms; drain_1 {got['drain_1_waiting_plain']:,.0f}, with "
            f"{WAITING_TASKS:,} waiting {got['drain_1_waiting']:,.0f}, without the OTel package "
            f"{got['drain_1_no_otel']:,.0f} jobs/s"
        )
    figures.update(to_figures(pairs))

    if cfg.history_finished or cfg.history_future:
        history, fresh = await sample_history_drains(dsn, cfg, say)
        figures["drain_1_history"] = Figure.of(history, JOBS_PER_S)
        figures["drain_1_history_fresh"] = Figure.of(fresh, JOBS_PER_S)

    from bench import workflows

    figures.update(await workflows.run(dsn, cfg, say))
    return figures


def settings() -> dict[str, Any]:
    default = inspect.signature(Worker).parameters["concurrency"].default
    return {
        "concurrency": CONCURRENCY,
        "concurrency (drain_default)": default,
        "concurrency (connections_per_worker)": BenchConfig().connections_concurrency,
        "poll_interval_s (latency_poll)": POLL_INTERVAL_S,
        "max_running (drain_max_running)": MAX_RUNNING,
        "waiting tasks (drain_1_waiting)": WAITING_TASKS,
    }


if __name__ == "__main__":
    # Re-import under the real module name, so the worker's objects live in bench.peer_pgtasks.
    from bench import peer_pgtasks as driver

    sys.exit(worker_main(sys.argv[1:], driver.serve, driver.add_worker_arguments))
