"""PgQueuer 1.6 driver for `make bench`.

Uses PgQueuer the way its documentation sets a worker up: one asyncpg connection wrapped in
``AsyncpgDriver``, a ``PgQueuer`` with one async entrypoint, ``PgQueuer.run(batch_size=10)``,
no concurrency limit and no rate limit. Enqueueing goes through ``Queries.enqueue`` (scalar
arguments for one job, lists for a batch), which is what application code calls.

Run alone: ``python -m bench.peer_pgqueuer run --dsn postgresql://...``.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from collections.abc import Sequence
from typing import Any

import asyncpg
from pgqueuer import AsyncpgDriver, PgQueuer, Queries
from pgqueuer.models import Job

from bench.common import (
    BenchConfig,
    Figure,
    Peer,
    WorkerContext,
    peer_main,
    run_suite,
    sample_connection_drains,
    serve_until_stopped,
)

NAME = "pgqueuer"
ENTRYPOINT = "bench_noop"
#: PgQueuer's own default, and what the issue asks for. Override: BENCH_PGQUEUER_BATCH_SIZE.
BATCH_SIZE = int(os.environ.get("BENCH_PGQUEUER_BATCH_SIZE", "10"))


async def install(dsn: str) -> None:
    """Create PgQueuer's tables, enum, trigger and function in a fresh database."""
    conn = await asyncpg.connect(dsn)
    try:
        await Queries(AsyncpgDriver(conn)).install()
    finally:
        await conn.close()


class PgQueuerClient:
    """One enqueueing application: one asyncpg connection, PgQueuer's ``Queries`` on top."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self._queries = Queries(AsyncpgDriver(conn))

    @classmethod
    async def connect(cls, dsn: str) -> PgQueuerClient:
        return cls(await asyncpg.connect(dsn))

    async def enqueue_one(self, seq: int) -> None:
        await self._queries.enqueue(ENTRYPOINT, str(seq).encode())

    async def enqueue_many(self, seqs: Sequence[int]) -> None:
        n = len(seqs)
        await self._queries.enqueue([ENTRYPOINT] * n, [str(s).encode() for s in seqs], [0] * n)

    async def outstanding(self) -> int:
        # PgQueuer deletes a job's row from its queue table once the job is finished (the
        # outcome goes to pgqueuer_log), so every remaining row is queued or running.
        return int(await self._conn.fetchval("SELECT count(*) FROM pgqueuer"))

    async def close(self) -> None:
        await self._conn.close()


def _add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    # Without --batch-size, PgQueuer.run() gets no arguments at all: its out-of-the-box setup.
    parser.add_argument("--batch-size", type=int)


async def serve(ctx: WorkerContext) -> None:
    """A normal PgQueuer worker whose only entrypoint is a recorded no-op."""
    conn = await asyncpg.connect(ctx.dsn)
    try:
        pgq = PgQueuer(AsyncpgDriver(conn))
        recorder = ctx.recorder

        @pgq.entrypoint(ENTRYPOINT)
        async def noop(job: Job) -> None:
            recorder.started(int(job.payload) if job.payload is not None else None)
            recorder.finished()

        options = {} if ctx.args.batch_size is None else {"batch_size": ctx.args.batch_size}
        task = await serve_until_stopped(ctx, pgq.run(**options))
        # PgQueuer's own graceful stop: finish in-flight jobs, flush the status-log buffer.
        pgq.shutdown.set()
        await task
    finally:
        await conn.close()


def _peer(worker_args: tuple[str, ...], settings: dict[str, Any]) -> Peer:
    return Peer(
        name=NAME,
        install=install,
        connect=PgQueuerClient.connect,
        worker_module="bench.peer_pgqueuer",
        worker_args=worker_args,
        settings={**settings, "max_concurrent_tasks": None, "driver": "asyncpg"},
    )


def make_peer(*, default: bool = False) -> Peer:
    """PgQueuer with ``batch_size=BATCH_SIZE``, or (``default``) ``run()`` with no argument."""
    if default:
        return _peer((), {"run()": "no arguments"})
    return _peer(("--batch-size", str(BATCH_SIZE)), {"batch_size": BATCH_SIZE})


async def run(dsn: str, cfg: BenchConfig) -> dict[str, Figure]:
    """Every figure for PgQueuer against the server at ``dsn`` (one fresh database per run)."""
    peer = make_peer()
    figures = await run_suite(dsn, cfg, peer)
    # pgtasks' drain_N_c10 (claims of 10) is compared with PgQueuer's batch of 10: these
    # very drains, shown again on that row.
    if BATCH_SIZE == 10:
        figures["drain_1_c10"] = figures["drain_1"]
        figures["drain_2_c10"] = figures["drain_2"]
    # Out of the box: PgQueuer.run() without arguments, one process; its connections too.
    defaults = make_peer(default=True)
    figures.update(await sample_connection_drains(defaults, dsn, cfg, "drain_default", _log))
    return figures


def settings() -> dict[str, Any]:
    """What the report prints next to PgQueuer's figures."""
    return {
        "batch_size": BATCH_SIZE,
        "max_concurrent_tasks": None,
        "drain_default": f"PgQueuer.run() with no arguments (batch_size={_default_batch()})",
        "connections_per_worker": "measured in drain_default (no-op jobs)",
    }


def _default_batch() -> Any:
    param = inspect.signature(PgQueuer.run).parameters.get("batch_size")
    return None if param is None else param.default


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


if __name__ == "__main__":
    # Re-import under the real module name: objects built here (procrastinate's App in
    # particular) must not live in __main__, or the library warns and task paths differ.
    from bench import peer_pgqueuer as _driver

    sys.exit(
        peer_main(
            sys.argv[1:],
            name="peer_pgqueuer",
            run=_driver.run,
            serve=_driver.serve,
            add_worker_arguments=_driver._add_worker_arguments,
        )
    )
