"""PgQueuer driver, set up the way its documentation sets up a worker (bench/README.md,
"Settings of each system"): ``PgQueuer.run(batch_size=10)`` over one asyncpg connection,
``Queries.enqueue`` for the clients. ``BENCH_PGQUEUER_BATCH_SIZE`` overrides the batch size.
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

from bench.harness import (
    BenchConfig,
    Figure,
    Log,
    Peer,
    WorkerContext,
    run_suite,
    sample_connection_drains,
    serve_until_stopped,
    worker_main,
)

NAME = "pgqueuer"
ENTRYPOINT = "bench_noop"
BATCH_SIZE = int(os.environ.get("BENCH_PGQUEUER_BATCH_SIZE", "10"))


async def install(dsn: str) -> None:
    """PgQueuer's tables, enum, trigger and function in a fresh database."""
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
        # A finished job's row leaves the queue table (its outcome goes to pgqueuer_log), so
        # every remaining row is queued or running.
        return int(await self._conn.fetchval("SELECT count(*) FROM pgqueuer"))

    async def close(self) -> None:
        await self._conn.close()


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    # Without --batch-size, PgQueuer.run() gets no argument at all: its out-of-the-box setup.
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


def make_peer(*, default: bool = False) -> Peer:
    """PgQueuer with ``batch_size=BATCH_SIZE``, or (``default``) ``run()`` with no argument."""
    args = () if default else ("--batch-size", str(BATCH_SIZE))
    return Peer(NAME, install, PgQueuerClient.connect, "bench.peer_pgqueuer", args)


async def run(dsn: str, cfg: BenchConfig, say: Log) -> dict[str, Figure]:
    """Every PgQueuer figure against the server at ``dsn``."""
    figures = await run_suite(dsn, cfg, make_peer(), say)
    # pgtasks' drain_N_c10 (claims of 10) is compared with PgQueuer's batch of 10: these very
    # drains, shown again on that row.
    if BATCH_SIZE == 10:
        figures["drain_1_c10"] = figures["drain_1"]
        figures["drain_2_c10"] = figures["drain_2"]
    # Out of the box: PgQueuer.run() with no argument, one process, and its connections.
    defaults = make_peer(default=True)
    figures.update(await sample_connection_drains(defaults, dsn, cfg, "drain_default", say))
    return figures


def settings() -> dict[str, Any]:
    default = inspect.signature(PgQueuer.run).parameters["batch_size"].default
    return {
        "batch_size": BATCH_SIZE,
        "drain_default": f"PgQueuer.run() with no arguments (batch_size={default})",
        "connections_per_worker": "measured in drain_default (no-op jobs)",
    }


if __name__ == "__main__":
    # Re-import under the real module name, so the worker's objects do not live in __main__.
    from bench import peer_pgqueuer as driver

    sys.exit(worker_main(sys.argv[1:], driver.serve, driver.add_worker_arguments))
