"""Shared harness for `make bench`: one methodology, many queue systems.

Every system under test (pgtasks and its peers) is measured by the *same* scenario code in this
module; a driver only says how its library installs its schema, enqueues one job, enqueues a
batch, counts unfinished jobs and runs a worker. That keeps the numbers comparable: the
differences come from the libraries, not from how each driver happened to time things.

Clock rules, because they decide what the numbers mean:

* Durations inside one process use ``time.perf_counter``.
* Anything compared across processes (a job's start in a worker against the moment the
  benchmark enqueued it or the moment it saw the queue empty) uses ``time.time``: on one
  machine that is the only clock all processes share.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import math
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import asyncpg

REPO_ROOT = Path(__file__).resolve().parent.parent

#: The keys every driver's ``run()`` returns, in report order.
FIGURE_KEYS: tuple[str, ...] = (
    "enqueue_single",
    "enqueue_batch",
    "drain_1",
    "drain_2",
    "latency_p50_ms",
    "latency_p99_ms",
)

#: Report order of every figure: each system-specific one right under the shared figure it
#: is compared with.
REPORT_ORDER: tuple[str, ...] = (
    "enqueue_single",
    "enqueue_single_paired",
    "enqueue_single_no_wakeup",
    "enqueue_batch",
    "drain_default",
    "drain_1",
    "drain_1_c10",
    "drain_max_running",
    "drain_1_history",
    "drain_1_history_fresh",
    "drain_2",
    "drain_2_c10",
    "drain_1_steps",
    "connections_per_worker",
    "maxconn_jobs_per_s",
    "maxconn_connection_errors",
    "maxconn_peak_connections",
    "latency_p50_ms",
    "latency_p99_ms",
    "latency_poll_p50_ms",
    "latency_poll_p99_ms",
    "drain_1_worker_cpu_us",
    "drain_1_server_cpu_us",
    "drain_2_worker_cpu_us",
    "drain_2_server_cpu_us",
)

JOBS_PER_S = "jobs/s"
MS = "ms"
RATIO = "x"
#: Format of a figure's numbers by unit: one decimal for milliseconds, two for ratios, none
#: for rates and counts.
_SPEC = {MS: ",.1f", RATIO: ",.2f"}
US_PER_JOB = "us/job"
CONNECTIONS = "connections"
COUNT = "count"

#: ``application_name`` of every connection the harness itself opens to a run database, so
#: that counting a worker's connections can leave the harness's own out.
HARNESS_APP = "bench_harness"


# --------------------------------------------------------------------------- figures


@dataclasses.dataclass(frozen=True)
class Figure:
    """One reported number: the median of several runs, with their spread kept visible.

    A single run on a small shared machine is noise; the median of >= 3 with min and max shows
    both the typical value and how much to trust it.
    """

    samples: tuple[float, ...]
    unit: str

    def __post_init__(self) -> None:
        if not self.samples:
            raise ValueError("a Figure needs at least one sample")

    @classmethod
    def of(cls, samples: Iterable[float], unit: str) -> Figure:
        """Build a Figure from any iterable of samples (kept in run order)."""
        return cls(tuple(float(s) for s in samples), unit)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, for bench/results/ and for the side-by-side table."""
        return {
            "median": self.median,
            "min": self.min,
            "max": self.max,
            "unit": self.unit,
            "samples": list(self.samples),
        }

    def __str__(self) -> str:
        def fmt(value: float) -> str:
            return f"{value:{_SPEC.get(self.unit, ',.0f')}}"

        return (
            f"{fmt(self.median)} {self.unit} "
            f"(min {fmt(self.min)}, max {fmt(self.max)}, n={len(self.samples)})"
        )


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), interpolating linearly between closest ranks.

    Same definition as numpy's default, written out so the bench needs no numpy.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def rate(jobs: int, seconds: float) -> float:
    """Jobs per second, refusing a zero or negative interval instead of reporting infinity."""
    if seconds <= 0:
        raise ValueError(f"non-positive interval {seconds!r} for {jobs} jobs")
    return jobs / seconds


class Stopwatch:
    """Times a block with ``perf_counter``: ``with Stopwatch() as sw: ...; sw.elapsed``."""

    def __init__(self) -> None:
        self.started = 0.0
        self.elapsed = 0.0

    def __enter__(self) -> Stopwatch:
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.started


# --------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """Sizes of every scenario. Defaults keep one system's full run near 2-7 min on 2 cores.

    Override any field from the environment as ``BENCH_<FIELD>`` (e.g. ``BENCH_DRAIN_JOBS=2000``)
    via :meth:`from_env`, or shrink everything with :meth:`scaled` for a smoke run.
    """

    #: Issue 8 asks for medians of at least 5 runs.
    runs: int = 5
    single_clients: int = 10
    single_jobs: int = 5_000
    batch_jobs: int = 10_000
    batch_size: int = 1_000
    drain_jobs: int = 10_000
    latency_jobs: int = 200
    latency_gap_ms: float = 20.0
    #: Jobs run through the idle worker before the latency series and not counted: the very
    #: first job pays one-off costs (statement preparation, lazy imports) of ~10-30 ms.
    latency_warmup: int = 5
    #: Pause after every worker said it is ready, so their start-up tails (LISTEN, first empty
    #: poll, registration) are over before jobs appear.
    settle_s: float = 1.0
    #: Upper bound for any single wait (workers ready, queue drained); a hang fails loudly.
    timeout_s: float = 120.0
    #: Shortest pause between the benchmark's "is the queue empty yet?" polls. The pause grows
    #: with the wait (0.5 % of it, at most 10x this) so a long drain is not slowed by polling
    #: while the end-time error stays under about 1 %.
    poll_interval_s: float = 0.01
    #: pgtasks' ``drain_1_history``: finished (DONE) tasks already in the table, and tasks
    #: scheduled a day ahead, when the drain starts. 0 and 0 skip that figure.
    history_finished: int = 1_000_000
    history_future: int = 100_000
    #: ``connections_per_worker``: one worker process at this concurrency runs
    #: ``connections_jobs`` tasks that checkpoint, log and report progress (the peak comes
    #: with the first full claim, so a few claims' worth is enough); the run database's
    #: connections are counted every ``connections_sample_s``.
    connections_concurrency: int = 200
    connections_jobs: int = 2_000
    connections_sample_s: float = 0.05
    #: The ``maxconn_*`` figures: a second server with ``max_connections = maxconn_limit``,
    #: ``maxconn_workers`` processes at ``maxconn_concurrency`` drain ``maxconn_jobs`` such
    #: tasks, ``maxconn_runs`` times (each run spawns 10 processes: kept short by default).
    maxconn_limit: int = 100
    maxconn_workers: int = 10
    maxconn_concurrency: int = 100
    maxconn_jobs: int = 20_000
    maxconn_runs: int = 1
    #: The maxconn drain's own bound: tasks that write are slower than no-op jobs.
    maxconn_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        may_be_zero = {"latency_warmup", "history_finished", "history_future"}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value < 0 or (value == 0 and field.name not in may_be_zero):
                raise ValueError(f"BenchConfig.{field.name} must be positive, got {value}")

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, prefix: str = "BENCH_"
    ) -> BenchConfig:
        """Defaults overridden by ``<prefix><FIELD>`` environment variables."""
        env = os.environ if environ is None else environ
        overrides: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = env.get(prefix + field.name.upper())
            if raw is not None:
                overrides[field.name] = float(raw) if field.type == "float" else int(raw)
        return cls(**overrides)

    def scaled(self, factor: float) -> BenchConfig:
        """Same config with every job count multiplied by ``factor`` (at least 1 job each)."""

        def scale(n: int) -> int:
            return max(1, round(n * factor))

        return dataclasses.replace(
            self,
            single_jobs=max(self.single_clients, scale(self.single_jobs)),
            batch_jobs=scale(self.batch_jobs),
            batch_size=min(self.batch_size, scale(self.batch_jobs)),
            drain_jobs=scale(self.drain_jobs),
            latency_jobs=scale(self.latency_jobs),
            history_finished=round(self.history_finished * factor),
            history_future=round(self.history_future * factor),
            connections_jobs=scale(self.connections_jobs),
            maxconn_jobs=scale(self.maxconn_jobs),
        )


# --------------------------------------------------------------------------- databases

_db_counter = itertools.count(1)


def dsn_with_database(dsn: str, database: str) -> str:
    """The same server and credentials as ``dsn``, pointed at another database."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"expected a postgresql:// URL, got {dsn!r}")
    return urlunsplit(parts._replace(path="/" + database))


@contextlib.asynccontextmanager
async def fresh_database(dsn: str, system: str) -> AsyncIterator[str]:
    """Create an empty database for one run and drop it afterwards; yields its DSN.

    A fresh database per run means no run inherits another's dead tuples, bloated indexes or
    leftover jobs, and systems never see each other's tables. The name carries the system, the
    process id and a counter so concurrent benches on one server cannot collide.
    """
    safe = re.sub(r"[^a-z0-9_]", "_", system.lower())
    name = f"bench_{safe}_{os.getpid()}_{next(_db_counter)}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield dsn_with_database(dsn, name)
    finally:
        await drop_database(dsn, name)


def harness_dsn(dsn: str) -> str:
    """``dsn`` with ``application_name`` set to :data:`HARNESS_APP` (asyncpg, psycopg and
    libpq all take it from the URL), for the harness's own connections to a run database."""
    parts = urlsplit(dsn)
    query = "&".join(q for q in (parts.query, f"application_name={HARNESS_APP}") if q)
    return urlunsplit(parts._replace(query=query))


async def drop_database(dsn: str, name: str) -> None:
    """Drop a run's database. FORCE: a worker that failed to stop must not leave it behind."""
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


# --------------------------------------------------------------------------- driver interface


class Client(Protocol):
    """One enqueueing client holding its own database connection(s), as a driver provides it."""

    async def enqueue_one(self, seq: int) -> None:
        """Enqueue one no-op job carrying ``seq``, as its own statement/transaction."""
        ...

    async def enqueue_many(self, seqs: Sequence[int]) -> None:
        """Enqueue one job per seq with the library's batch API, in one call."""
        ...

    async def outstanding(self) -> int:
        """How many enqueued jobs are not finished yet (queued or running)."""
        ...

    async def close(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class Peer:
    """What the scenarios need to know about one system.

    ``worker_module`` must be runnable as ``python -m <worker_module> worker ...`` (see
    :func:`peer_main`); ``worker_args`` are appended to that command line.
    """

    name: str
    install: Callable[[str], Awaitable[None]]
    connect: Callable[[str], Awaitable[Client]]
    worker_module: str
    worker_args: tuple[str, ...] = ()
    #: Library settings worth printing next to the figures (batch size, concurrency, ...).
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------- worker side


class JobRecorder:
    """Counts jobs in a worker process and remembers when they ran.

    Kept to a few attribute writes per job so recording does not slow the no-op jobs it times.
    """

    __slots__ = ("count", "first_start", "last_end", "record_starts", "starts")

    def __init__(self, record_starts: bool = False) -> None:
        self.record_starts = record_starts
        self.count = 0
        self.first_start: float | None = None
        self.last_end: float | None = None
        self.starts: dict[int, float] = {}

    def started(self, seq: int | None = None) -> None:
        """Call first thing in the job body."""
        now = time.time()
        if self.first_start is None:
            self.first_start = now
        if self.record_starts and seq is not None:
            self.starts[seq] = now

    def finished(self) -> None:
        """Call last thing in the job body."""
        self.last_end = time.time()
        self.count += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "first_start": self.first_start,
            "last_end": self.last_end,
            "starts": {str(k): v for k, v in self.starts.items()},
        }


@dataclasses.dataclass
class WorkerContext:
    """Handed to a driver's ``serve`` function inside a worker process.

    ``serve`` builds the library's normal worker with a job that calls ``recorder.started`` and
    ``recorder.finished``, calls :meth:`mark_ready` once the worker is about to run, returns
    after ``stop`` is set (SIGTERM), having let the library shut down gracefully.
    """

    args: argparse.Namespace
    recorder: JobRecorder
    stop: asyncio.Event
    ready_file: Path

    @property
    def dsn(self) -> str:
        return str(self.args.dsn)

    def mark_ready(self) -> None:
        self.ready_file.write_text(str(time.time()))


ServeFn = Callable[[WorkerContext], Awaitable[None]]
AddArgumentsFn = Callable[[argparse.ArgumentParser], None]


def _worker_parser(add_arguments: AddArgumentsFn | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="worker", description="benchmark worker process")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--stats-file", required=True, type=Path)
    parser.add_argument("--ready-file", required=True, type=Path)
    parser.add_argument("--record-starts", action="store_true")
    if add_arguments is not None:
        add_arguments(parser)
    return parser


def worker_main(
    argv: Sequence[str], serve: ServeFn, add_arguments: AddArgumentsFn | None = None
) -> int:
    """Entry point of a worker process: run ``serve`` until SIGTERM, then write its stats.

    Stats go to a file (written atomically) rather than stdout, so library logging can never be
    mistaken for results or block on a full pipe.
    """
    args = _worker_parser(add_arguments).parse_args(list(argv))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        ctx = WorkerContext(args, JobRecorder(args.record_starts), stop, args.ready_file)
        await serve(ctx)
        tmp = args.stats_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(ctx.recorder.snapshot()))
        tmp.replace(args.stats_file)

    asyncio.run(main())
    return 0


async def serve_until_stopped(ctx: WorkerContext, run: Awaitable[None]) -> asyncio.Task[None]:
    """Run a library's worker coroutine, mark ready, and return once stop is set.

    Returns the still-running task so the caller can ask the library to shut down its own way
    and then await it. If the library's worker dies first, its exception is raised here rather
    than leaving the benchmark waiting for a drain that cannot happen.
    """
    task: asyncio.Task[None] = asyncio.ensure_future(run)
    ctx.mark_ready()
    stop_task = asyncio.create_task(ctx.stop.wait())
    await asyncio.wait({task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        stop_task.cancel()
        task.result()  # raises the worker's exception, if any
        raise RuntimeError("the library's worker returned before it was asked to stop")
    return task


# --------------------------------------------------------------------------- benchmark side


@dataclasses.dataclass(frozen=True)
class WorkerStats:
    """What one worker process reported after it stopped."""

    count: int
    first_start: float | None
    last_end: float | None
    starts: dict[int, float]

    @classmethod
    def load(cls, path: Path) -> WorkerStats:
        raw = json.loads(path.read_text())
        return cls(
            count=int(raw["count"]),
            first_start=raw["first_start"],
            last_end=raw["last_end"],
            starts={int(k): float(v) for k, v in raw["starts"].items()},
        )


#: How a worker's log says the server turned a connection away (asyncpg's exception class,
#: psycopg's and libpq's message).
CONNECTION_REFUSED = re.compile(r"too many clients|TooManyConnectionsError", re.IGNORECASE)


class WorkerProcess:
    """A worker subprocess: ``python -m <module> worker --dsn ... --stats-file ...``.

    Separate processes (not tasks in the benchmark's own event loop) so workers compete for CPU
    the way real deployments do, and 2 workers can really use 2 cores.
    """

    def __init__(self, proc: asyncio.subprocess.Process, workdir: Path, label: str) -> None:
        self.proc = proc
        self.label = label
        self.ready_file = workdir / f"{label}.ready"
        self.stats_file = workdir / f"{label}.json"
        self.log_file = workdir / f"{label}.log"

    @classmethod
    async def spawn(
        cls,
        module: str,
        dsn: str,
        workdir: Path,
        label: str,
        *,
        record_starts: bool = False,
        extra_args: Sequence[str] = (),
    ) -> WorkerProcess:
        log_path = workdir / f"{label}.log"
        cmd = [
            sys.executable,
            "-m",
            module,
            "worker",
            "--dsn",
            dsn,
            "--stats-file",
            str(workdir / f"{label}.json"),
            "--ready-file",
            str(workdir / f"{label}.ready"),
            *(["--record-starts"] if record_starts else []),
            *extra_args,
        ]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                cwd=REPO_ROOT,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        return cls(proc, workdir, label)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _failure(self, what: str) -> RuntimeError:
        return RuntimeError(
            f"worker {self.label} {what} (exit {self.proc.returncode}); log tail:\n"
            + self.log_tail()
        )

    async def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.proc.returncode is not None:
                raise self._failure("exited before it was ready")
            if time.monotonic() > deadline:
                raise self._failure(f"not ready after {timeout:.0f}s")
            await asyncio.sleep(0.02)

    def connection_errors(self) -> int:
        """Lines of this worker's log that say the server refused a connection."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return 0
        return sum(1 for line in text.splitlines() if CONNECTION_REFUSED.search(line))

    def check_alive(self) -> None:
        if self.proc.returncode is not None:
            raise self._failure("died while the benchmark was running")

    async def stop(self, timeout: float) -> WorkerStats:
        """SIGTERM, wait for a graceful exit, and read the stats the worker wrote."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.kill()
            await self.proc.wait()
            raise self._failure(f"did not stop within {timeout:.0f}s") from None
        if self.proc.returncode != 0 or not self.stats_file.exists():
            raise self._failure("failed")
        return WorkerStats.load(self.stats_file)

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


@contextlib.asynccontextmanager
async def running_workers(
    peer: Peer, dsn: str, count: int, cfg: BenchConfig, *, record_starts: bool = False
) -> AsyncIterator[list[WorkerProcess]]:
    """Start ``count`` workers, wait until all are ready plus ``cfg.settle_s``, yield them.

    On the way out any worker not already stopped is killed, so a failing scenario never leaves
    processes holding connections to a database about to be dropped.
    """
    with tempfile.TemporaryDirectory(prefix=f"bench-{peer.name}-") as tmp:
        workdir = Path(tmp)
        workers: list[WorkerProcess] = []
        try:
            for i in range(count):
                workers.append(
                    await WorkerProcess.spawn(
                        peer.worker_module,
                        dsn,
                        workdir,
                        f"w{i}",
                        record_starts=record_starts,
                        extra_args=peer.worker_args,
                    )
                )
            for w in workers:
                await w.wait_ready(cfg.timeout_s)
            await asyncio.sleep(cfg.settle_s)
            for w in workers:
                w.check_alive()
            yield workers
        finally:
            for w in workers:
                w.kill()
            for w in workers:
                with contextlib.suppress(ProcessLookupError):
                    await w.proc.wait()


async def wait_drained(
    client: Client, cfg: BenchConfig, workers: Sequence[WorkerProcess] = ()
) -> float:
    """Poll until no job is outstanding; returns the ``time.time()`` at which that was seen.

    Polling is deliberately library-neutral: "done" means the library has recorded the job as
    finished in the database, whatever it does in between. The pause between polls grows with
    the wait (see ``BenchConfig.poll_interval_s``): on 2 cores, a fixed 10 ms poll would itself
    steal noticeable CPU from a slow, many-second drain.
    """
    started = time.monotonic()
    deadline = started + cfg.timeout_s
    while True:
        left = await client.outstanding()
        if left == 0:
            return time.time()
        for w in workers:
            w.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{left} jobs still outstanding after {cfg.timeout_s:.0f}s")
        waited = time.monotonic() - started
        await asyncio.sleep(min(cfg.poll_interval_s * 10, max(cfg.poll_interval_s, waited / 200)))


class ConnectionSampler:
    """Counts client connections every ``interval`` seconds while it runs; keeps the peaks.

    ``peak_run_db``: connections to the run database that the harness did not open (every
    harness connection carries :data:`HARNESS_APP`), i.e. the workers'. ``peak_server``: every
    client connection to the server, the harness's included, as ``max_connections`` counts
    them. Its own connection is opened before the workers start, so a full server cannot
    keep it out.
    """

    _SQL = """
    SELECT count(*) FILTER (WHERE datname = current_database()
                              AND application_name IS DISTINCT FROM $1),
           count(*)
      FROM pg_stat_activity
     WHERE backend_type = 'client backend'
    """

    def __init__(self, db: str, interval: float) -> None:
        self._db = db
        self._interval = interval
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self.peak_run_db = 0
        self.peak_server = 0

    async def _loop(self, conn: asyncpg.Connection) -> None:
        while True:
            run_db, server = await conn.fetchrow(self._SQL, HARNESS_APP)
            self.peak_run_db = max(self.peak_run_db, int(run_db))
            self.peak_server = max(self.peak_server, int(server))
            await asyncio.sleep(self._interval)

    async def __aenter__(self) -> ConnectionSampler:
        self._conn = await asyncpg.connect(harness_dsn(self._db))
        self._task = asyncio.create_task(self._loop(self._conn))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None and self._conn is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._conn.close()


async def _expect_outstanding(client: Client, expected: int) -> None:
    got = await client.outstanding()
    if got != expected:
        raise RuntimeError(f"expected {expected} outstanding jobs after enqueue, found {got}")


# --------------------------------------------------------------------------- scenarios


async def _enqueue_singles(clients: Sequence[Client], first: int, count: int) -> float:
    """Seconds for ``count`` one-row enqueues (seqs ``first`` on) shared out over ``clients``,
    each a coroutine on its own connection enqueueing one job per call."""
    share, extra = divmod(count, len(clients))
    bounds = list(
        itertools.accumulate(
            (share + (1 if i < extra else 0) for i in range(len(clients))), initial=first
        )
    )

    async def one_client(client: Client, lo: int, hi: int) -> None:
        for seq in range(lo, hi):
            await client.enqueue_one(seq)

    with Stopwatch() as sw:
        await asyncio.gather(
            *(one_client(c, bounds[i], bounds[i + 1]) for i, c in enumerate(clients))
        )
    return sw.elapsed


async def sample_enqueue_single(peer: Peer, dsn: str, cfg: BenchConfig) -> float:
    """jobs/s for ``single_jobs`` one-row enqueues from ``single_clients`` concurrent clients.

    Each client is a coroutine with its own connection, enqueueing its share one job per call;
    connecting is not timed. No workers run, so this is the pure insert path.
    """
    async with fresh_database(dsn, peer.name) as db:
        await peer.install(db)
        clients = [await peer.connect(db) for _ in range(cfg.single_clients)]
        try:
            elapsed = await _enqueue_singles(clients, 0, cfg.single_jobs)
            await _expect_outstanding(clients[0], cfg.single_jobs)
        finally:
            for c in clients:
                await c.close()
    return rate(cfg.single_jobs, elapsed)


async def sample_enqueue_single_interleaved(
    a: Peer, b: Peer, dsn: str, cfg: BenchConfig, slices: int = 10
) -> tuple[float, float]:
    """(jobs/s of ``a``, jobs/s of ``b``): ``sample_enqueue_single`` for two setups of one
    system, each in its own fresh database, measured in alternating slices.

    The ``single_jobs`` of each side go in ``slices`` slices, in the order a b b a a b ...,
    so that a drift in the machine's speed (two shared cores: rates here moved by 2x between
    runs minutes apart) falls on both sides alike, and a linear drift cancels out. Measured
    one after the other instead, the on/off ratio of wake-ups ranged 0.66-1.20 within one run.
    """
    per = cfg.single_jobs // slices
    async with (
        fresh_database(dsn, a.name) as db_a,
        fresh_database(dsn, b.name) as db_b,
    ):
        await a.install(db_a)
        await b.install(db_b)
        sides = [
            [await a.connect(db_a) for _ in range(cfg.single_clients)],
            [await b.connect(db_b) for _ in range(cfg.single_clients)],
        ]
        elapsed = [0.0, 0.0]
        try:
            for i in range(slices):
                for side in (0, 1) if i % 2 == 0 else (1, 0):
                    elapsed[side] += await _enqueue_singles(sides[side], i * per, per)
            for clients in sides:
                await _expect_outstanding(clients[0], per * slices)
        finally:
            for clients in sides:
                for c in clients:
                    await c.close()
    return rate(per * slices, elapsed[0]), rate(per * slices, elapsed[1])


async def sample_enqueue_batch(peer: Peer, dsn: str, cfg: BenchConfig) -> float:
    """jobs/s for ``batch_jobs`` enqueued by one client, ``batch_size`` per batch-API call."""
    async with fresh_database(dsn, peer.name) as db:
        await peer.install(db)
        client = await peer.connect(db)
        try:
            with Stopwatch() as sw:
                for lo in range(0, cfg.batch_jobs, cfg.batch_size):
                    await client.enqueue_many(range(lo, min(lo + cfg.batch_size, cfg.batch_jobs)))
            await _expect_outstanding(client, cfg.batch_jobs)
        finally:
            await client.close()
    return rate(cfg.batch_jobs, sw.elapsed)


DatabaseFactory = Callable[[str, str], contextlib.AbstractAsyncContextManager[str]]


# --------------------------------------------------------------------------- CPU accounting

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds(pid: int) -> float | None:
    """CPU time used so far by process ``pid`` (all its threads), or None if unreadable.

    Uses /proc/<pid>/task/*/schedstat (nanoseconds) where the kernel has it, else the
    utime+stime clock ticks of /proc/<pid>/stat (10 ms resolution). Linux only; elsewhere the
    CPU figures are simply left out.
    """
    proc = Path("/proc") / str(pid)
    total = 0.0
    try:
        for task in (proc / "task").iterdir():
            total += int((task / "schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        total = 0.0
    if total > 0:
        return total
    try:
        fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, ValueError, IndexError):
        return None


def total_cpu_seconds(pids: Iterable[int]) -> float | None:
    """Sum of :func:`process_cpu_seconds`; None if any process could not be read."""
    total = 0.0
    for pid in pids:
        cpu = process_cpu_seconds(pid)
        if cpu is None:
            return None
        total += cpu
    return total


async def server_cpu_seconds(conn: asyncpg.Connection) -> dict[int, float] | None:
    """CPU seconds of every server process (backends, WAL writer, checkpointer...) by pid.

    Only meaningful when the server runs on this machine (the embedded one always does); None
    when its processes cannot be read.
    """
    pids = [int(r[0]) for r in await conn.fetch("SELECT pid FROM pg_stat_activity")]
    out: dict[int, float] = {}
    for pid in pids:
        cpu = process_cpu_seconds(pid)
        if cpu is None:
            return None
        out[pid] = cpu
    return out


@dataclasses.dataclass(frozen=True)
class DrainSample:
    """One drain: its rate, where the CPU went (microseconds per job), when measurable, and
    what the workers did to the server's connections.

    The CPU window runs from just before the (single, batch) enqueue to the poll that saw the
    queue empty, so ``server_cpu_us`` includes inserting the jobs as well as claiming and
    finishing them, for every system alike. ``worker_cpu_us`` is the worker processes' own
    CPU over the same window. ``done`` is how many jobs the workers ran to the end;
    ``connection_errors`` counts the lines of their logs that report a refused connection.
    The peaks (see :class:`ConnectionSampler`) are None unless the drain was asked to watch.
    """

    #: None only for a ``strict=False`` drain that did not finish within ``timeout_s``.
    rate: float | None
    worker_cpu_us: float | None
    server_cpu_us: float | None
    done: int
    connection_errors: int
    peak_worker_connections: int | None = None
    peak_server_connections: int | None = None


async def sample_drain(
    peer: Peer,
    dsn: str,
    cfg: BenchConfig,
    workers: int,
    *,
    database: DatabaseFactory = fresh_database,
) -> float:
    """jobs/s for ``workers`` worker processes emptying a queue of ``drain_jobs`` no-op jobs.

    Workers are started and given ``settle_s`` to finish starting up; then all jobs are
    enqueued in a single batch call (so they become visible at once) and the clock runs from
    the first job's start, as recorded by the job itself, to the poll that first sees the
    queue empty. Worker start-up and the enqueue itself are therefore not counted.

    ``database(dsn, system)`` yields the database to run in; by default a fresh, empty one.
    pgtasks' history figure passes a copy of a database that already holds a large history.
    """
    sample = await sample_drain_detailed(peer, dsn, cfg, workers, database=database)
    assert sample.rate is not None  # a strict drain finishes or raises
    return sample.rate


async def sample_drain_detailed(
    peer: Peer,
    dsn: str,
    cfg: BenchConfig,
    workers: int,
    *,
    database: DatabaseFactory = fresh_database,
    jobs: int | None = None,
    watch_connections: bool = False,
    strict: bool = True,
) -> DrainSample:
    """:func:`sample_drain`, plus the CPU the workers and the server spent per job.

    ``jobs`` replaces ``cfg.drain_jobs``. ``watch_connections`` samples the connections from
    before the first worker starts until the last has stopped. ``strict=False`` reports a
    drain whose workers ran fewer jobs than enqueued (some failed for good) instead of
    raising, its rate counting the jobs that ran; and one that did not finish within
    ``timeout_s`` (its workers killed) with no rate, so its connection errors still count.
    """
    jobs = cfg.drain_jobs if jobs is None else jobs
    async with database(dsn, peer.name) as db:
        await peer.install(db)
        client = await peer.connect(harness_dsn(db))
        probe = await asyncpg.connect(harness_dsn(db))
        sampler = ConnectionSampler(db, cfg.connections_sample_s) if watch_connections else None
        try:
            async with contextlib.AsyncExitStack() as stack:
                if sampler is not None:
                    await stack.enter_async_context(sampler)
                procs = await stack.enter_async_context(running_workers(peer, db, workers, cfg))
                pids = [w.proc.pid for w in procs]
                server_before = await server_cpu_seconds(probe)
                workers_before = total_cpu_seconds(pids)
                await client.enqueue_many(range(jobs))
                end: float | None = None
                try:
                    end = await wait_drained(client, cfg, procs)
                except TimeoutError:
                    if strict:
                        raise
                if end is not None:
                    workers_after = total_cpu_seconds(pids)
                    server_after = await server_cpu_seconds(probe)
                    stats = [await w.stop(cfg.timeout_s) for w in procs]
                # else the workers are killed on the way out: no stats, but their logs count.
                errors = sum(w.connection_errors() for w in procs)
        finally:
            await probe.close()
            await client.close()
    peaks = (None, None) if sampler is None else (sampler.peak_run_db, sampler.peak_server)
    if end is None:
        return DrainSample(None, None, None, 0, errors, *peaks)
    done = sum(s.count for s in stats)
    if done != jobs and (strict or done == 0):
        raise RuntimeError(f"workers ran {done} jobs, expected {jobs}")
    start = min(s.first_start for s in stats if s.first_start is not None)

    def per_job(before: float | None, after: float | None) -> float | None:
        if before is None or after is None:
            return None
        return (after - before) / jobs * 1e6

    server_us = None
    if server_before is not None and server_after is not None:
        # Processes that ended meanwhile are dropped; ones that started count from zero.
        used = sum(cpu - server_before.get(pid, 0.0) for pid, cpu in server_after.items())
        server_us = used / jobs * 1e6
    return DrainSample(
        rate(done, end - start),
        per_job(workers_before, workers_after),
        server_us,
        done,
        errors,
        *peaks,
    )


async def sample_connection_drains(
    peer: Peer,
    dsn: str,
    cfg: BenchConfig,
    key: str,
    log: Callable[[str], None],
    jobs: int | None = None,
) -> dict[str, Figure]:
    """``cfg.runs`` drains of ``jobs`` (default ``drain_jobs``) by one worker process,
    watching its connections: the rate as ``key`` and the peak number of connections it
    held as ``connections_per_worker``."""
    rates: list[float] = []
    peaks: list[float] = []
    for i in range(cfg.runs):
        sample = await sample_drain_detailed(peer, dsn, cfg, 1, jobs=jobs, watch_connections=True)
        assert sample.rate is not None and sample.peak_worker_connections is not None
        rates.append(sample.rate)
        peaks.append(sample.peak_worker_connections)
        log(
            f"[{peer.name}] {key} run {i + 1}: {rates[-1]:,.0f} jobs/s, peak {peaks[-1]:.0f} "
            f"connections, {sample.connection_errors} connection errors"
        )
    return {
        key: Figure.of(rates, JOBS_PER_S),
        "connections_per_worker": Figure.of(peaks, CONNECTIONS),
    }


async def sample_latency(peer: Peer, dsn: str, cfg: BenchConfig) -> tuple[float, float]:
    """(p50, p99) in ms of enqueue -> job start, with one idle worker waiting for work.

    Jobs are enqueued one at a time on a fixed ``latency_gap_ms`` schedule. The enqueue time is
    taken just before the enqueue call, so the figure is what a caller experiences: the insert
    and commit, the wake-up (LISTEN/NOTIFY or polling) and the worker's fetch. The first
    ``latency_warmup`` jobs (negative seqs) are run and waited for first, then ignored.
    """
    enqueued: dict[int, float] = {}
    async with fresh_database(dsn, peer.name) as db:
        await peer.install(db)
        client = await peer.connect(db)
        try:
            async with running_workers(peer, db, 1, cfg, record_starts=True) as procs:
                gap = cfg.latency_gap_ms / 1000
                for seq in range(-cfg.latency_warmup, 0):
                    await client.enqueue_one(seq)
                    await asyncio.sleep(gap)
                await wait_drained(client, cfg, procs)
                t0 = time.perf_counter()
                for seq in range(cfg.latency_jobs):
                    delay = t0 + seq * gap - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    enqueued[seq] = time.time()
                    await client.enqueue_one(seq)
                await wait_drained(client, cfg, procs)
                (stats,) = [await w.stop(cfg.timeout_s) for w in procs]
        finally:
            await client.close()
    missing = set(enqueued) - set(stats.starts)
    if missing:
        raise RuntimeError(f"{len(missing)} latency jobs never reported a start")
    latencies = [(stats.starts[s] - enqueued[s]) * 1000 for s in enqueued]
    return percentile(latencies, 50), percentile(latencies, 99)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def run_suite(
    dsn: str, cfg: BenchConfig, peer: Peer, log: Callable[[str], None] = _stderr
) -> dict[str, Figure]:
    """All scenarios, ``cfg.runs`` times each, each run in its own fresh database."""
    single: list[float] = []
    batch: list[float] = []
    drains: dict[int, list[float]] = {1: [], 2: []}
    p50: list[float] = []
    p99: list[float] = []
    started = time.perf_counter()
    for i in range(cfg.runs):
        single.append(await sample_enqueue_single(peer, dsn, cfg))
        log(f"[{peer.name}] enqueue_single run {i + 1}: {single[-1]:,.0f} jobs/s")
    for i in range(cfg.runs):
        batch.append(await sample_enqueue_batch(peer, dsn, cfg))
        log(f"[{peer.name}] enqueue_batch run {i + 1}: {batch[-1]:,.0f} jobs/s")
    cpu: dict[str, list[float]] = {}
    for n, samples in drains.items():
        for i in range(cfg.runs):
            sample = await sample_drain_detailed(peer, dsn, cfg, n)
            assert sample.rate is not None  # a strict drain finishes or raises
            samples.append(sample.rate)
            for part, value in (("worker", sample.worker_cpu_us), ("server", sample.server_cpu_us)):
                if value is not None:
                    cpu.setdefault(f"drain_{n}_{part}_cpu_us", []).append(value)
            log(
                f"[{peer.name}] drain_{n} run {i + 1}: {samples[-1]:,.0f} jobs/s"
                + (
                    f" (CPU per job: worker {sample.worker_cpu_us:,.0f} us, "
                    f"server {sample.server_cpu_us:,.0f} us)"
                    if sample.worker_cpu_us is not None and sample.server_cpu_us is not None
                    else ""
                )
            )
    for i in range(cfg.runs):
        a, b = await sample_latency(peer, dsn, cfg)
        p50.append(a)
        p99.append(b)
        log(f"[{peer.name}] latency run {i + 1}: p50 {a:.1f} ms, p99 {b:.1f} ms")
    log(f"[{peer.name}] suite took {time.perf_counter() - started:.0f}s")
    return {
        "enqueue_single": Figure.of(single, JOBS_PER_S),
        "enqueue_batch": Figure.of(batch, JOBS_PER_S),
        "drain_1": Figure.of(drains[1], JOBS_PER_S),
        "drain_2": Figure.of(drains[2], JOBS_PER_S),
        "latency_p50_ms": Figure.of(p50, MS),
        "latency_p99_ms": Figure.of(p99, MS),
        **{key: Figure.of(values, US_PER_JOB) for key, values in cpu.items()},
    }


def report_keys(results: Iterable[Mapping[str, Figure]]) -> list[str]:
    """Every key present in ``results``, in report order.

    The shared figures come in FIGURE_KEYS order; a system's own extra figures (pgtasks'
    ``enqueue_single_no_wakeup``, ``drain_1_history``...) go right under the shared figure they
    are compared with, and anything else comes last, so nothing measured is left out.
    """
    present: list[str] = []
    for figures in results:
        present += [k for k in figures if k not in present]
    order = [k for k in REPORT_ORDER if k in present]
    return order + [k for k in present if k not in order]


def format_cell(fig: Figure | None) -> str:
    """``median [min-max]``, one decimal for milliseconds, two for ratios, none for rates."""
    if fig is None:
        return "-"
    spec = _SPEC.get(fig.unit, ",.0f")
    return f"{fig.median:{spec}} [{fig.min:{spec}}-{fig.max:{spec}}]"


def format_figures(name: str, figures: Mapping[str, Figure]) -> str:
    """A plain-text block of one system's figures, in report order."""
    keys = report_keys([figures])
    width = max(len(k) for k in keys)
    lines = [name]
    lines += [f"  {k:<{width}}  {figures[k]}" for k in keys]
    return "\n".join(lines)


def format_table(
    results: Mapping[str, Mapping[str, Figure]],
    extra_columns: Mapping[str, Mapping[str, str]] | None = None,
) -> str:
    """Systems side by side, one row per figure: ``median [min-max]`` in each cell.

    ``extra_columns`` maps a header to ``{figure key: text}`` (e.g. pgtasks / PgQueuer ratios),
    appended to the right of the systems; missing entries print as blank.
    """
    extra = dict(extra_columns or {})
    names = list(results)
    rows = [["figure", *names, *extra]]
    for key in report_keys(results.values()):
        unit = next((r[key].unit for r in results.values() if key in r), "")
        rows.append(
            [
                f"{key} ({unit})",
                *(format_cell(results[n].get(key)) for n in names),
                *(col.get(key, "") for col in extra.values()),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


RunFn = Callable[[str, BenchConfig], Coroutine[Any, Any, dict[str, Figure]]]


def peer_main(
    argv: Sequence[str],
    *,
    name: str,
    run: RunFn,
    serve: ServeFn,
    add_worker_arguments: AddArgumentsFn | None = None,
) -> int:
    """Command line shared by every driver module.

    ``python -m bench.<driver> worker ...`` is the worker process the scenarios spawn;
    ``python -m bench.<driver> run --dsn URL [--scale F] [--json FILE]`` runs that system's
    whole suite on its own and prints its figures.
    """
    if argv and argv[0] == "worker":
        return worker_main(argv[1:], serve, add_worker_arguments)
    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}")
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run this system's whole suite and print its figures")
    run_p.add_argument("--dsn", default=os.environ.get("BENCH_DSN"), required=False)
    run_p.add_argument("--scale", type=float, default=1.0, help="multiply all job counts")
    run_p.add_argument("--json", type=Path, help="also write the figures here as JSON")
    sub.add_parser("worker", help="(internal) a worker process; see bench/common.py")
    args = parser.parse_args(list(argv))
    if not args.dsn:
        parser.error("--dsn (or BENCH_DSN) is required")
    cfg = BenchConfig.from_env()
    if args.scale != 1.0:
        cfg = cfg.scaled(args.scale)
    figures = asyncio.run(run(args.dsn, cfg))
    print(format_figures(name, figures))
    if args.json:
        args.json.write_text(
            json.dumps({k: f.as_dict() for k, f in figures.items()}, indent=2) + "\n"
        )
    return 0
