"""procrastinate driver, set up the way its documentation sets up a worker (bench/README.md,
"Settings of each system"): ``App.run_worker_async`` with its defaults, ``defer_async`` and
``batch_defer_async`` by task name for the clients. ``BENCH_PROCRASTINATE_CONCURRENCY``
overrides the concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import Any

from procrastinate import App, PsycopgConnector
from procrastinate.types import JSONDict

from bench.harness import (
    BenchConfig,
    Figure,
    Log,
    Peer,
    WorkerContext,
    run_suite,
    serve_until_stopped,
    worker_main,
)

NAME = "procrastinate"
TASK = "bench_noop"
#: None: procrastinate's default (1).
CONCURRENCY = int(os.environ.get("BENCH_PROCRASTINATE_CONCURRENCY") or 0) or None
#: At concurrency 1 procrastinate drains no-op jobs at ~200-300/s, so a 10,000-job drain would
#: take minutes per run; it drains at most this many. Its per-job cost rises with queue depth,
#: so the smaller queue favours it, if anything.
DRAIN_JOBS = 3_000


def make_app(dsn: str, **pool_args: Any) -> App:
    return App(connector=PsycopgConnector(conninfo=dsn, **pool_args))


async def install(dsn: str) -> None:
    async with make_app(dsn, min_size=1, max_size=1).open_async() as app:
        await app.schema_manager.apply_schema_async()


class ProcrastinateClient:
    """One enqueueing application: an App whose pool holds exactly one connection."""

    def __init__(self, app: App) -> None:
        self._app = app
        self._deferrer = app.configure_task(TASK)

    @classmethod
    async def connect(cls, dsn: str) -> ProcrastinateClient:
        app = make_app(dsn, min_size=1, max_size=1)
        await app.open_async()
        return cls(app)

    async def enqueue_one(self, seq: int) -> None:
        await self._deferrer.defer_async(seq=seq)

    async def enqueue_many(self, seqs: Sequence[int]) -> None:
        kwargs: list[JSONDict] = [{"seq": s} for s in seqs]
        await self._deferrer.batch_defer_async(*kwargs)

    async def outstanding(self) -> int:
        row = await self._app.connector.execute_query_one_async(
            "SELECT count(*) AS n FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
        )
        return int(row["n"])

    async def close(self) -> None:
        await self._app.close_async()


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", type=int)


async def serve(ctx: WorkerContext) -> None:
    """A normal procrastinate worker whose only task is a recorded no-op."""
    app = make_app(ctx.dsn)
    recorder = ctx.recorder

    @app.task(name=TASK)
    async def noop(seq: int) -> None:
        recorder.started(seq)
        recorder.finished()

    options: dict[str, Any] = {"install_signal_handlers": False}
    if ctx.args.concurrency is not None:
        options["concurrency"] = ctx.args.concurrency
    async with app.open_async():
        task = await serve_until_stopped(ctx, app.run_worker_async(**options))
        # Cancelling run_worker_async is procrastinate's graceful stop: it stops fetching,
        # lets running jobs finish, then returns by re-raising.
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def make_peer() -> Peer:
    args = ("--concurrency", str(CONCURRENCY)) if CONCURRENCY else ()
    return Peer(NAME, install, ProcrastinateClient.connect, "bench.peer_procrastinate", args)


async def run(dsn: str, cfg: BenchConfig, say: Log) -> dict[str, Figure]:
    """Every procrastinate figure against the server at ``dsn``."""
    cfg = dataclasses.replace(cfg, drain_jobs=min(cfg.drain_jobs, DRAIN_JOBS))
    return await run_suite(dsn, cfg, make_peer(), say)


def settings() -> dict[str, Any]:
    return {"concurrency": CONCURRENCY or "default (1)", "drain_jobs": f"at most {DRAIN_JOBS}"}


if __name__ == "__main__":
    # Re-import under the real module name: procrastinate's App must not live in __main__,
    # or the library warns and task paths differ.
    from bench import peer_procrastinate as driver

    sys.exit(worker_main(sys.argv[1:], driver.serve, driver.add_worker_arguments))
