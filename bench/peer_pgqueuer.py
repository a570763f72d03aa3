"""PgQueuer 1.6 driver for `make bench`.

Uses PgQueuer the way its documentation sets a worker up: one asyncpg connection wrapped in
``AsyncpgDriver``, a ``PgQueuer`` with one async entrypoint, ``PgQueuer.run(batch_size=10)``,
no concurrency limit and no rate limit. Enqueueing goes through ``Queries.enqueue`` (scalar
arguments for one job, lists for a batch), which is what application code calls.

Run alone: ``python -m bench.peer_pgqueuer run --dsn postgresql://...``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

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
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)


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

        task = await serve_until_stopped(ctx, pgq.run(batch_size=ctx.args.batch_size))
        # PgQueuer's own graceful stop: finish in-flight jobs, flush the status-log buffer.
        pgq.shutdown.set()
        await task
    finally:
        await conn.close()


async def run(dsn: str, cfg: BenchConfig) -> dict[str, Figure]:
    """Every figure for PgQueuer against the server at ``dsn`` (one fresh database per run)."""
    peer = Peer(
        name=NAME,
        install=install,
        connect=PgQueuerClient.connect,
        worker_module="bench.peer_pgqueuer",
        worker_args=("--batch-size", str(BATCH_SIZE)),
        settings={"batch_size": BATCH_SIZE, "max_concurrent_tasks": None, "driver": "asyncpg"},
    )
    return await run_suite(dsn, cfg, peer)


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
