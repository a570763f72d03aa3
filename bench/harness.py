"""The harness behind `make bench`: every system measured by the scenario code here; a driver
(``bench/peer_*.py``) only says how its library installs its schema, enqueues one job and a
batch, counts unfinished jobs and runs its normal worker, so the numbers differ because the
libraries do. Durations in one process use ``time.perf_counter``; anything compared across
processes ``time.time``, the one clock they all share.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"

JOBS_PER_S = "jobs/s"
MS = "ms"
RATIO = "x"
US_PER_JOB = "us/job"
CONNECTIONS = "connections"
COUNT = "count"
#: Number format by unit: one decimal for milliseconds, two for ratios, none otherwise.
_SPEC = {MS: ",.1f", RATIO: ",.2f"}

#: ``application_name`` of every connection the harness itself opens to a run database, so
#: that counting a worker's connections can leave the harness's own out.
HARNESS_APP = "bench_harness"

#: Report order: each system-specific figure right under the shared one it is compared with;
#: keys not listed here come last, so nothing measured is left out of the table.
_ORDER = """enqueue_single enqueue_single_paired enqueue_single_no_wakeup enqueue_batch
    drain_default drain_1 drain_1_c10 drain_max_running drain_1_history drain_1_history_fresh
    drain_2 drain_2_c10 drain_1_steps connections_per_worker maxconn_jobs_per_s
    maxconn_connection_errors maxconn_peak_connections latency_p50_ms latency_p99_ms
    latency_poll_p50_ms latency_poll_p99_ms drain_1_worker_cpu_us drain_1_server_cpu_us
    drain_2_worker_cpu_us drain_2_server_cpu_us"""
REPORT_ORDER: tuple[str, ...] = tuple(_ORDER.split())

Log = Callable[[str], None]
T = TypeVar("T")


def log(msg: str) -> None:
    """Progress goes to stderr, so stdout carries only the report."""
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- figures


@dataclasses.dataclass(frozen=True)
class Figure:
    """One reported number: the median of several runs (at least one), with min and max kept
    visible. A single run on a small shared machine is noise; the range says how far to trust it.
    """

    samples: tuple[float, ...]
    unit: str

    @classmethod
    def of(cls, samples: Iterable[float], unit: str) -> Figure:
        return cls(tuple(float(s) for s in samples), unit)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def as_dict(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "min": min(self.samples),
            "max": max(self.samples),
            "unit": self.unit,
            "samples": list(self.samples),
        }


def p50_p99(values: Sequence[float]) -> tuple[float, float]:
    """Linear between closest ranks (numpy's default); at least two values."""
    q = statistics.quantiles(values, n=100, method="inclusive")
    return q[49], q[98]


def rate(jobs: int, seconds: float) -> float:
    """Jobs per second, refusing a zero or negative interval instead of reporting infinity."""
    if seconds <= 0:
        raise ValueError(f"non-positive interval {seconds!r} for {jobs} jobs")
    return jobs / seconds


async def alternate(
    rounds: int, *sides: Callable[[], Awaitable[T]]
) -> AsyncIterator[tuple[int, list[T]]]:
    """Run every side once per round, the order reversed every other round (a b, b a, ...);
    yield ``(round, results in side order)``. A ratio of figures minutes apart measures the
    machine's drift too (one drain moved between 11,000 and 19,000 jobs/s from run to run);
    within a round, the order flipped, drift falls on both sides alike."""
    for i in range(rounds):
        results = {j: await sides[j]() for j in range(len(sides))[:: -1 if i % 2 else 1]}
        yield i, [results[j] for j in range(len(sides))]


# --------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """Sizes of every scenario. Any field can be set from the environment as ``BENCH_<FIELD>``
    (:meth:`from_env`); :meth:`scaled` shrinks every job count for a smoke run."""

    #: Runs (rounds) per figure; the report is their median with min and max.
    runs: int = 5
    single_clients: int = 10
    single_jobs: int = 5_000
    batch_jobs: int = 10_000
    batch_size: int = 1_000
    drain_jobs: int = 10_000
    latency_jobs: int = 200
    latency_gap_ms: float = 20.0
    #: Jobs run before the latency series and not counted: the very first job pays one-off
    #: costs (statement preparation, lazy imports) of 10-30 ms.
    latency_warmup: int = 5
    #: Pause after every worker said it is ready, so their start-up tails (LISTEN, first empty
    #: poll, registration) are over before jobs appear.
    settle_s: float = 1.0
    #: Upper bound for any single wait (workers ready, queue drained): a hang fails loudly.
    timeout_s: float = 120.0
    #: Shortest pause between "is the queue empty yet?" polls; it grows with the wait (0.5 %
    #: of it, at most 10x this), so polling neither slows a long drain nor blurs a short one.
    poll_interval_s: float = 0.01
    #: pgtasks' drain_1_history: DONE tasks already in the table, and tasks scheduled a day
    #: ahead. 0 and 0 skip that figure.
    history_finished: int = 1_000_000
    history_future: int = 100_000
    #: connections_per_worker: one worker at this concurrency runs this many tasks that
    #: checkpoint, log and report progress; connections are counted every sample interval.
    connections_concurrency: int = 200
    connections_jobs: int = 2_000
    connections_sample_s: float = 0.05
    #: maxconn_*: a second server with max_connections = maxconn_limit, maxconn_workers
    #: processes at maxconn_concurrency draining maxconn_jobs such tasks.
    maxconn_limit: int = 100
    maxconn_workers: int = 10
    maxconn_concurrency: int = 100
    maxconn_jobs: int = 20_000
    maxconn_runs: int = 1
    #: The maxconn drain's own bound: tasks that write are slower than no-op jobs.
    maxconn_timeout_s: float = 300.0
    #: pgtasks' wf_* figures: a chord of this many children, a chain of this many steps.
    chord_children: int = 10_000
    chain_steps: int = 100
    #: bench/floors.py. ceiling: connections sharing the 100 slots of the raw claim loop; one
    #: (claims of 100) was the fastest: 10,000 jobs/s against 8,500 with 2, 7,600 with 4.
    ceiling_connections: int = 1
    #: filtered: ready tasks of another type ahead of the claimer's (a condition, not a job
    #: count: not scaled); timed claims per side, tasks per claim.
    filtered_backlog: int = 200_000
    filtered_claims: int = 200
    filtered_claim_max: int = 10
    #: bulk: jobs per system and round, jobs per batch call.
    bulk_jobs: int = 100_000
    bulk_chunk: int = 10_000

    def __post_init__(self) -> None:
        may_be_zero = {"latency_warmup", "history_finished", "history_future"}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value < 0 or (value == 0 and field.name not in may_be_zero):
                raise ValueError(f"BenchConfig.{field.name} must be positive, got {value}")

    @classmethod
    def from_env(cls) -> BenchConfig:
        given = {f: os.environ.get("BENCH_" + f.name.upper()) for f in dataclasses.fields(cls)}
        typed: dict[str, Any] = {
            f.name: float(v) if f.type == "float" else int(v) for f, v in given.items() if v
        }
        return cls(**typed)

    def scaled(self, factor: float) -> BenchConfig:
        """Every job count multiplied by ``factor`` (at least 1 each, 2 for percentiles)."""

        def scale(n: int, least: int = 1) -> int:
            return max(least, round(n * factor))

        return dataclasses.replace(
            self,
            single_jobs=scale(self.single_jobs, self.single_clients),
            batch_jobs=scale(self.batch_jobs),
            batch_size=min(self.batch_size, scale(self.batch_jobs)),
            drain_jobs=scale(self.drain_jobs),
            latency_jobs=scale(self.latency_jobs, 2),
            history_finished=round(self.history_finished * factor),
            history_future=round(self.history_future * factor),
            connections_jobs=scale(self.connections_jobs),
            maxconn_jobs=scale(self.maxconn_jobs),
            chord_children=scale(self.chord_children, 10),
            chain_steps=scale(self.chain_steps, 2),
            bulk_jobs=scale(self.bulk_jobs),
            bulk_chunk=min(self.bulk_chunk, scale(self.bulk_jobs)),
        )


# --------------------------------------------------------------------------- the server


@contextlib.contextmanager
def benchmark_server(
    dsn: str | None = None, *, max_connections: int | None = None
) -> Iterator[str]:
    """Yield the DSN to benchmark against: ``dsn``, or else a private embedded server
    (pgtasks' own, in a throw-away folder deleted on the way out, also on Ctrl-C): identical
    settings for every system, nothing left from an earlier run, no collision with ``make run``
    or the tests. ``max_connections`` replaces its limit (300)."""
    if dsn is not None:
        yield dsn
        return
    from pgtasks.embedded import EmbeddedPostgres

    class LimitedPostgres(EmbeddedPostgres):
        """The embedded server takes no settings, so this wraps its private ``_pg_ctl``:
        pg_ctl passes every ``-o`` on to postgres, and of two ``-c`` the last one wins.
        Whoever relies on the limit checks ``SHOW max_connections``."""

        def _pg_ctl(self, args: list[str], *, timeout: float) -> None:
            if max_connections is not None and args[:1] == ["start"]:
                args = [*args, "-o", f"-c max_connections={max_connections}"]
            super()._pg_ctl(args, timeout=timeout)

    folder = Path(tempfile.mkdtemp(prefix="pgtasks-bench-"))
    server = LimitedPostgres(folder)
    try:
        log(f"starting the embedded PostgreSQL in {folder} ...")
        yield server.start()
    finally:
        server.destroy()
        shutil.rmtree(folder, ignore_errors=True)


async def server_settings(dsn: str) -> dict[str, str]:
    """The server settings every system ran with (one server, so the same for all)."""
    names = ("server_version", "max_connections", "shared_buffers", "synchronous_commit")
    names += ("fsync", "wal_level", "autovacuum", "jit")
    conn = await asyncpg.connect(dsn)
    try:
        return {n: str(await conn.fetchval(f"SHOW {n}")) for n in names}
    finally:
        await conn.close()


def machine_load() -> dict[str, Any]:
    """How busy the machine is (load average, pytest processes of other work on the same
    cores), stored with the figures so that a noisy run can be told from a quiet one."""
    pytest = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                pytest += b"pytest" in (entry / "cmdline").read_bytes()
    return {
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "pytest_processes": pytest,
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def provenance() -> dict[str, Any]:
    """Which code was measured: the commit, what differed from it, and a hash of the SQL."""
    digest = hashlib.sha256()
    for path in sorted((REPO_ROOT / "sql").rglob("*.sql")):
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes())
    dirty = _git("status", "--porcelain", "--", "sql", "pgtasks") or ""
    return {
        "commit": _git("rev-parse", "HEAD"),
        "uncommitted_changes_in": sorted({line[3:].split("/")[0] for line in dirty.splitlines()}),
        "sql_sha256": digest.hexdigest()[:16],
    }


# --------------------------------------------------------------------------- databases

_db_counter = itertools.count(1)


def with_database(dsn: str, database: str) -> str:
    """The same server and credentials as ``dsn``, pointed at another database."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"expected a postgresql:// URL, got {dsn!r}")
    return urlunsplit(parts._replace(path="/" + database))


def harness_dsn(dsn: str) -> str:
    """``dsn`` marked as the harness's own (``application_name``; asyncpg, psycopg and libpq
    all take it from the URL), so connection counts can leave it out."""
    parts = urlsplit(dsn)
    query = "&".join(q for q in (parts.query, f"application_name={HARNESS_APP}") if q)
    return urlunsplit(parts._replace(query=query))


async def admin_execute(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def fresh_database(dsn: str, system: str) -> AsyncIterator[str]:
    """An empty database for one run, dropped afterwards (FORCE: a worker that failed to stop
    must not leave it behind); yields its DSN. No run inherits another's dead tuples, bloated
    indexes or jobs; the name carries the process id, so two benches cannot collide."""
    name = f"bench_{re.sub(r'[^a-z0-9_]', '_', system.lower())}_{os.getpid()}_{next(_db_counter)}"
    await admin_execute(dsn, f'CREATE DATABASE "{name}"')
    try:
        yield with_database(dsn, name)
    finally:
        await admin_execute(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


DatabaseFactory = Callable[[str, str], contextlib.AbstractAsyncContextManager[str]]


# --------------------------------------------------------------------------- driver interface


class Client(Protocol):
    """One enqueueing application with its own connection(s), as a driver provides it."""

    async def enqueue_one(self, seq: int) -> None:
        """Enqueue one no-op job carrying ``seq``, as its own statement and commit."""

    async def enqueue_many(self, seqs: Sequence[int]) -> None:
        """Enqueue one job per seq with the library's batch API, in one call."""

    async def outstanding(self) -> int:
        """How many enqueued jobs the database does not yet hold as finished."""

    async def close(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class Peer:
    """One system as the scenarios see it. ``worker_module`` runs as ``python -m
    <worker_module> --dsn ... [worker_args]`` (see :func:`worker_main`), in ``tree`` (another
    revision's checkout, see :func:`revision_tree`) if given, else in this one."""

    name: str
    install: Callable[[str], Awaitable[None]]
    connect: Callable[[str], Awaitable[Client]]
    worker_module: str
    worker_args: tuple[str, ...] = ()
    tree: Path | None = None


def tree_env(tree: Path) -> dict[str, str]:
    """The environment of a child process that imports ``tree``'s packages first, then this
    checkout's (a revision tree has no ``bench``, so the harness is always this one)."""
    path = (str(tree), str(REPO_ROOT), os.environ.get("PYTHONPATH"))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(filter(None, path)))}


@contextlib.contextmanager
def revision_tree(rev: str) -> Iterator[tuple[Path, str]]:
    """A temporary ``git worktree`` of ``rev`` with its ``bench`` folder deleted, removed on
    the way out; yields (its folder, the full commit). Its ``pgtasks`` and ``sql`` are that
    revision's, so its migrate installs that revision's schema."""
    commit = _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if not commit:
        raise SystemExit(f"--baseline {rev}: not a commit of {REPO_ROOT}")
    folder = Path(tempfile.mkdtemp(prefix="pgtasks-baseline-")) / "tree"
    git = ["git", "-C", str(REPO_ROOT), "worktree"]
    subprocess.run([*git, "add", "--detach", "--quiet", str(folder), commit], check=True)
    try:
        shutil.rmtree(folder / "bench")
        log(f"baseline {rev} ({commit[:12]}) checked out in {folder}")
        yield folder, commit
    finally:
        subprocess.run([*git, "remove", "--force", str(folder)], check=False)
        shutil.rmtree(folder.parent, ignore_errors=True)


# --------------------------------------------------------------------------- worker side


class JobRecorder:
    """Counts a worker process's jobs and when they ran (``started`` first in the job's body,
    ``finished`` last): a few attribute writes per job, so it does not slow the jobs it times."""

    __slots__ = ("count", "first_start", "record_starts", "starts")

    def __init__(self, record_starts: bool = False) -> None:
        self.record_starts = record_starts
        self.count = 0
        self.first_start: float | None = None
        self.starts: dict[int, float] = {}

    def started(self, seq: int | None = None) -> None:
        now = time.time()
        if self.first_start is None:
            self.first_start = now
        if self.record_starts and seq is not None:
            self.starts[seq] = now

    def finished(self) -> None:
        self.count += 1


@dataclasses.dataclass
class WorkerContext:
    """What a driver's ``serve`` gets in a worker process: it builds the library's normal
    worker with a job that calls ``recorder.started`` and ``recorder.finished``, calls
    :func:`serve_until_stopped`, and lets the library shut down its own graceful way."""

    args: argparse.Namespace
    recorder: JobRecorder
    stop: asyncio.Event

    @property
    def dsn(self) -> str:
        return str(self.args.dsn)


ServeFn = Callable[[WorkerContext], Awaitable[None]]
AddArgumentsFn = Callable[[argparse.ArgumentParser], None]


def worker_main(argv: Sequence[str], serve: ServeFn, add_arguments: AddArgumentsFn) -> int:
    """A worker process: run ``serve`` until SIGTERM, then write what it ran to a file
    (atomically; not stdout, so library logging can never be taken for results)."""
    parser = argparse.ArgumentParser(description="benchmark worker process")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--stats-file", required=True, type=Path)
    parser.add_argument("--ready-file", required=True, type=Path)
    parser.add_argument("--record-starts", action="store_true")
    add_arguments(parser)
    args = parser.parse_args(list(argv))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        ctx = WorkerContext(args, JobRecorder(args.record_starts), stop)
        await serve(ctx)
        rec = ctx.recorder
        tmp = args.stats_file.with_suffix(".tmp")
        snapshot = {"count": rec.count, "first_start": rec.first_start, "starts": rec.starts}
        tmp.write_text(json.dumps(snapshot))
        tmp.replace(args.stats_file)

    asyncio.run(main())
    return 0


async def serve_until_stopped(ctx: WorkerContext, run: Awaitable[None]) -> asyncio.Task[None]:
    """Start the library's worker coroutine, say ready, return its task once stop is set; if
    the worker dies first, raise its exception rather than let the harness wait in vain."""
    task: asyncio.Task[None] = asyncio.ensure_future(run)
    Path(ctx.args.ready_file).write_text(str(time.time()))
    stop_task = asyncio.create_task(ctx.stop.wait())
    await asyncio.wait({task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        stop_task.cancel()
        task.result()
        raise RuntimeError("the library's worker returned before it was asked to stop")
    return task


# --------------------------------------------------------------------------- harness side


@dataclasses.dataclass(frozen=True)
class WorkerStats:
    count: int
    first_start: float | None
    starts: dict[int, float]

    @classmethod
    def load(cls, path: Path) -> WorkerStats:
        raw = json.loads(path.read_text())
        starts = {int(k): float(v) for k, v in raw["starts"].items()}
        return cls(int(raw["count"]), raw["first_start"], starts)


#: How a worker's log says the server turned a connection away (asyncpg's exception class,
#: psycopg's and libpq's message).
CONNECTION_REFUSED = re.compile(r"too many clients|TooManyConnectionsError", re.IGNORECASE)


class WorkerProcess:
    """A worker subprocess. Processes, not tasks in the harness's event loop, so workers
    compete for CPU the way deployments do and two workers can really use two cores."""

    def __init__(self, proc: asyncio.subprocess.Process, workdir: Path, label: str) -> None:
        self.proc = proc
        self.label = label
        self.ready_file = workdir / f"{label}.ready"
        self.stats_file = workdir / f"{label}.json"
        self.log_file = workdir / f"{label}.log"

    @classmethod
    async def spawn(
        cls, peer: Peer, dsn: str, workdir: Path, label: str, record_starts: bool
    ) -> WorkerProcess:
        cmd = [sys.executable, "-m", peer.worker_module, "--dsn", dsn]
        cmd += ["--stats-file", str(workdir / f"{label}.json")]
        cmd += ["--ready-file", str(workdir / f"{label}.ready")]
        cmd += [*(["--record-starts"] if record_starts else []), *peer.worker_args]
        tree = peer.tree or REPO_ROOT
        with (workdir / f"{label}.log").open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *cmd, cwd=tree, env=tree_env(tree), stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        return cls(proc, workdir, label)

    def _log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def _failure(self, what: str) -> RuntimeError:
        tail = "\n".join(self._log_text().splitlines()[-30:]) or "(no log)"
        return RuntimeError(f"worker {self.label} {what} (exit {self.proc.returncode}):\n{tail}")

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
        return sum(1 for line in self._log_text().splitlines() if CONNECTION_REFUSED.search(line))

    def check_alive(self) -> None:
        if self.proc.returncode is not None:
            raise self._failure("died while the benchmark was running")

    async def stop(self, timeout: float) -> WorkerStats:
        """SIGTERM (each library's graceful stop), wait, and read what the worker wrote."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise self._failure(f"did not stop within {timeout:.0f}s") from None
        if self.proc.returncode != 0 or not self.stats_file.exists():
            raise self._failure("failed")
        return WorkerStats.load(self.stats_file)


@contextlib.asynccontextmanager
async def running_workers(
    peer: Peer, dsn: str, count: int, cfg: BenchConfig, *, record_starts: bool = False
) -> AsyncIterator[list[WorkerProcess]]:
    """Start ``count`` workers, wait until all are ready plus ``settle_s``, yield them; on the
    way out kill any still running, so a failing scenario never leaves processes holding
    connections to a database about to be dropped."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{peer.name}-") as tmp:
        workers: list[WorkerProcess] = []
        try:
            for i in range(count):
                w = await WorkerProcess.spawn(peer, dsn, Path(tmp), f"w{i}", record_starts)
                workers.append(w)
            for w in workers:
                await w.wait_ready(cfg.timeout_s)
            await asyncio.sleep(cfg.settle_s)
            for w in workers:
                w.check_alive()
            yield workers
        finally:
            for w in workers:
                if w.proc.returncode is None:
                    w.proc.kill()
            for w in workers:
                with contextlib.suppress(ProcessLookupError):
                    await w.proc.wait()


async def wait_drained(
    client: Client, cfg: BenchConfig, workers: Sequence[WorkerProcess] = ()
) -> float:
    """Poll until no job is outstanding (finished as the database holds it, whatever the
    library buffers); return the ``time.time()`` it was seen. The pause grows with the wait: on
    2 cores a fixed 10 ms poll would itself steal CPU from a slow, many-second drain."""
    started = time.monotonic()
    while (left := await client.outstanding()) != 0:
        for w in workers:
            w.check_alive()
        waited = time.monotonic() - started
        if waited > cfg.timeout_s:
            raise TimeoutError(f"{left} jobs still outstanding after {cfg.timeout_s:.0f}s")
        await asyncio.sleep(min(cfg.poll_interval_s * 10, max(cfg.poll_interval_s, waited / 200)))
    return time.time()


class ConnectionSampler:
    """Counts client connections every ``interval`` while it runs and keeps the peaks:
    ``peak_run_db`` of the run database's not opened by the harness (the workers'),
    ``peak_server`` of all, as ``max_connections`` counts them. It connects before the workers
    start, so a full server cannot keep it out."""

    _SQL = """
    SELECT count(*) FILTER (WHERE datname = current_database()
                              AND application_name IS DISTINCT FROM $1),
           count(*)
      FROM pg_stat_activity WHERE backend_type = 'client backend'
    """

    def __init__(self, db: str, interval: float) -> None:
        self._db, self._interval = db, interval
        self.peak_run_db = self.peak_server = 0

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
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._conn.close()


# --------------------------------------------------------------------------- CPU accounting


def process_cpu_seconds(pid: int) -> float | None:
    """CPU time used so far by process ``pid``, all threads, from /proc/<pid>/task/*/schedstat
    (nanoseconds); None where that cannot be read (not Linux: CPU figures are left out)."""
    try:
        tasks = list((Path("/proc") / str(pid) / "task").iterdir())
        return sum(int((t / "schedstat").read_text().split()[0]) for t in tasks) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def total_cpu_seconds(pids: Iterable[int]) -> float | None:
    values = [process_cpu_seconds(pid) for pid in pids]
    return None if None in values else sum(v for v in values if v is not None)


async def server_cpu_seconds(conn: asyncpg.Connection) -> dict[int, float] | None:
    """CPU seconds of every server process (backends, WAL writer, checkpointer...) by pid;
    meaningful only for a server on this machine (the embedded one always is)."""
    pids = [pid for (pid,) in await conn.fetch("SELECT pid FROM pg_stat_activity")]
    cpu = {pid: process_cpu_seconds(pid) for pid in pids}
    return None if None in cpu.values() else {p: c for p, c in cpu.items() if c is not None}


# --------------------------------------------------------------------------- scenarios


async def _expect_outstanding(client: Client, expected: int) -> None:
    got = await client.outstanding()
    if got != expected:
        raise RuntimeError(f"expected {expected} outstanding jobs after enqueue, found {got}")


async def _enqueue_singles(clients: Sequence[Client], first: int, count: int) -> float:
    """Seconds for ``count`` one-job enqueues (seqs from ``first``) shared out over
    ``clients``, each a coroutine on its own connection enqueueing one job per call."""
    share, extra = divmod(count, len(clients))
    sizes = (share + (1 if i < extra else 0) for i in range(len(clients)))
    bounds = list(itertools.accumulate(sizes, initial=first))

    async def one_client(client: Client, lo: int, hi: int) -> None:
        for seq in range(lo, hi):
            await client.enqueue_one(seq)

    started = time.perf_counter()
    await asyncio.gather(*(one_client(c, bounds[i], bounds[i + 1]) for i, c in enumerate(clients)))
    return time.perf_counter() - started


async def sample_enqueue_single(peer: Peer, dsn: str, cfg: BenchConfig) -> float:
    """jobs/s: ``single_jobs`` one-job enqueues from ``single_clients`` clients, no worker
    running (the insert path alone); connecting is not timed."""
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
    """(jobs/s of ``a``, of ``b``): :func:`sample_enqueue_single` for two setups, each in its
    own database, in alternating slices a b b a a b ... so that drift in the machine's speed
    falls on both sides alike (a linear drift cancels out). One after the other instead, the
    same code gave wake-up on/off ratios from 0.66 to 1.20 within one run."""
    per = cfg.single_jobs // slices
    async with fresh_database(dsn, a.name) as db_a, fresh_database(dsn, b.name) as db_b:
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
            for c in itertools.chain(*sides):
                await c.close()
    return rate(per * slices, elapsed[0]), rate(per * slices, elapsed[1])


async def sample_enqueue_batch(peer: Peer, dsn: str, cfg: BenchConfig) -> float:
    """jobs/s: ``batch_jobs`` enqueued by one client, ``batch_size`` per batch-API call."""
    async with fresh_database(dsn, peer.name) as db:
        await peer.install(db)
        client = await peer.connect(db)
        try:
            started = time.perf_counter()
            for lo in range(0, cfg.batch_jobs, cfg.batch_size):
                await client.enqueue_many(range(lo, min(lo + cfg.batch_size, cfg.batch_jobs)))
            elapsed = time.perf_counter() - started
            await _expect_outstanding(client, cfg.batch_jobs)
        finally:
            await client.close()
    return rate(cfg.batch_jobs, elapsed)


@dataclasses.dataclass(frozen=True)
class DrainSample:
    """One drain: its rate; CPU per job (us) of the workers and of every server process, from
    before the enqueue to the poll that saw it empty (the server's includes the inserts); jobs
    run; log lines reporting a refused connection; when watched, the connection peaks."""

    #: None only for a ``strict=False`` drain that did not finish within ``timeout_s``.
    rate: float | None
    worker_cpu_us: float | None = None
    server_cpu_us: float | None = None
    done: int = 0
    connection_errors: int = 0
    peak_worker_connections: int | None = None
    peak_server_connections: int | None = None


async def sample_drain(
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
    """``workers`` worker processes empty a queue of ``jobs`` (default ``drain_jobs``) no-op
    jobs, enqueued in one batch call once they settled; timed from the first job's start, as
    the job recorded it, to the poll that first sees the queue empty (README, "Drain").

    ``database(dsn, system)`` yields the database (default: a fresh one). ``watch_connections``
    samples connections from before the first worker starts until the last stopped.
    ``strict=False`` reports a drain whose workers ran fewer jobs than enqueued, or that did not
    finish within ``timeout_s`` (rate None, connection errors still counted), and raises not.
    """
    jobs = cfg.drain_jobs if jobs is None else jobs
    stats: list[WorkerStats] = []
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
    worker_us = server_us = None
    if workers_before is not None and workers_after is not None:
        worker_us = (workers_after - workers_before) / jobs * 1e6
    if server_before is not None and server_after is not None:
        # Processes that ended meanwhile are dropped; ones that started count from zero.
        used = sum(cpu - server_before.get(pid, 0.0) for pid, cpu in server_after.items())
        server_us = used / jobs * 1e6
    return DrainSample(rate(done, end - start), worker_us, server_us, done, errors, *peaks)


async def sample_connection_drains(
    peer: Peer, dsn: str, cfg: BenchConfig, key: str, say: Log, jobs: int | None = None
) -> dict[str, Figure]:
    """``runs`` one-process drains watching the worker's connections: the rate as ``key``, the
    most connections it held at once as ``connections_per_worker``."""
    rates: list[float] = []
    peaks: list[float] = []
    for i in range(cfg.runs):
        s = await sample_drain(peer, dsn, cfg, 1, jobs=jobs, watch_connections=True)
        assert s.rate is not None and s.peak_worker_connections is not None
        rates.append(s.rate)
        peaks.append(s.peak_worker_connections)
        say(
            f"[{peer.name}] {key} run {i + 1}: {s.rate:,.0f} jobs/s, peak {peaks[-1]:.0f} "
            f"connections, {s.connection_errors} connection errors"
        )
    return {
        key: Figure.of(rates, JOBS_PER_S),
        "connections_per_worker": Figure.of(peaks, CONNECTIONS),
    }


async def sample_latency(peer: Peer, dsn: str, cfg: BenchConfig) -> list[float]:
    """Milliseconds from just before the enqueue call to the job's start, one idle worker
    waiting, jobs ``latency_gap_ms`` apart: what a caller experiences (insert and commit, the
    wake-up or poll, the worker's fetch). The warm-up jobs (negative seqs) are not counted."""
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
                    await asyncio.sleep(max(0.0, t0 + seq * gap - time.perf_counter()))
                    enqueued[seq] = time.time()
                    await client.enqueue_one(seq)
                await wait_drained(client, cfg, procs)
                (stats,) = [await w.stop(cfg.timeout_s) for w in procs]
        finally:
            await client.close()
    if missing := set(enqueued) - set(stats.starts):
        raise RuntimeError(f"{len(missing)} latency jobs never reported a start")
    return [(stats.starts[s] - enqueued[s]) * 1000 for s in enqueued]


async def run_suite(dsn: str, cfg: BenchConfig, peer: Peer, say: Log = log) -> dict[str, Figure]:
    """The figures every system gets, ``runs`` times each, each run in its own database."""
    out: dict[str, list[float]] = {}

    def add(key: str, value: float | None) -> None:
        if value is not None:
            out.setdefault(key, []).append(value)

    for i in range(cfg.runs):
        add("enqueue_single", await sample_enqueue_single(peer, dsn, cfg))
        say(f"[{peer.name}] enqueue_single run {i + 1}: {out['enqueue_single'][-1]:,.0f} jobs/s")
    for i in range(cfg.runs):
        add("enqueue_batch", await sample_enqueue_batch(peer, dsn, cfg))
        say(f"[{peer.name}] enqueue_batch run {i + 1}: {out['enqueue_batch'][-1]:,.0f} jobs/s")
    for n in (1, 2):
        for i in range(cfg.runs):
            s = await sample_drain(peer, dsn, cfg, n)
            add(f"drain_{n}", s.rate)
            add(f"drain_{n}_worker_cpu_us", s.worker_cpu_us)
            add(f"drain_{n}_server_cpu_us", s.server_cpu_us)
            us = [math.nan if v is None else v for v in (s.worker_cpu_us, s.server_cpu_us)]
            cpu = f"CPU per job: {us[0]:,.0f} us worker, {us[1]:,.0f} us server"
            say(f"[{peer.name}] drain_{n} run {i + 1}: {s.rate:,.0f} jobs/s ({cpu})")
    for i in range(cfg.runs):
        p50, p99 = p50_p99(await sample_latency(peer, dsn, cfg))
        add("latency_p50_ms", p50)
        add("latency_p99_ms", p99)
        say(f"[{peer.name}] latency run {i + 1}: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    return figures(out)


def figures(values: Mapping[str, Iterable[float]]) -> dict[str, Figure]:
    """Figures from samples by key, each unit told by its key's ending."""
    units = {"_ms": MS, "_us": US_PER_JOB, "_count": COUNT, "_writes": "updates"}

    def unit(key: str) -> str:
        ending = next((u for e, u in units.items() if key.endswith(e)), JOBS_PER_S)
        return RATIO if "_over_" in key or "_ratio" in key else ending

    return {key: Figure.of(v, unit(key)) for key, v in values.items()}


# --------------------------------------------------------------------------- the table


def format_cell(fig: Figure | None) -> str:
    """``median [min-max]``."""
    if fig is None:
        return "-"
    spec = _SPEC.get(fig.unit, ",.0f")
    return f"{fig.median:{spec}} [{min(fig.samples):{spec}}-{max(fig.samples):{spec}}]"


def format_table(
    results: Mapping[str, Mapping[str, Figure]],
    extra_columns: Mapping[str, Mapping[str, str]] | None = None,
) -> str:
    """Systems side by side, one row per figure, then ``extra_columns`` ({header: {key: text}})."""
    extra = dict(extra_columns or {})
    present: list[str] = []
    for figures in results.values():
        present += [k for k in figures if k not in present]
    keys = [k for k in REPORT_ORDER if k in present] + [k for k in present if k not in REPORT_ORDER]
    rows = [["figure", *results, *extra]]
    for key in keys:
        unit = next(r[key].unit for r in results.values() if key in r)
        cells = [format_cell(r.get(key)) for r in results.values()]
        rows.append([f"{key} ({unit})", *cells, *(col.get(key, "") for col in extra.values())])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
