"""procrastinate 3.10 driver for `make bench`.

Uses procrastinate as its documentation does: an ``App`` over a ``PsycopgConnector``, one async
task, ``App.run_worker_async`` with the library's defaults (concurrency 1, LISTEN/NOTIFY on,
polling fallback every 5 s, finished jobs kept in the table). Enqueueing goes through
``defer_async`` / ``batch_defer_async`` on the task, by name, as a separate application would.

Run alone: ``python -m bench.peer_procrastinate run --dsn postgresql://...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from procrastinate import App, PsycopgConnector
from procrastinate.types import JSONDict

from bench.common import (
    BenchConfig,
    Figure,
    Peer,
    WorkerContext,
    peer_main,
    run_suite,
    serve_until_stopped,
)

NAME = "procrastinate"
TASK = "bench_noop"
#: None means procrastinate's default (1). Override: BENCH_PROCRASTINATE_CONCURRENCY.
CONCURRENCY: int | None = (
    int(os.environ["BENCH_PROCRASTINATE_CONCURRENCY"])
    if os.environ.get("BENCH_PROCRASTINATE_CONCURRENCY")
    else None
)


def make_app(dsn: str, **pool_args: Any) -> App:
    """An App on a psycopg pool; ``pool_args`` go to psycopg_pool (min_size, max_size...)."""
    return App(connector=PsycopgConnector(conninfo=dsn, **pool_args))


async def install(dsn: str) -> None:
    """Apply procrastinate's schema to a fresh database."""
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


def _add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", type=int, default=None)


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
        # Cancelling run_worker_async is procrastinate's documented graceful stop: the
        # worker stops fetching, lets running jobs finish, then returns by re-raising.
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def run(dsn: str, cfg: BenchConfig) -> dict[str, Figure]:
    """Every figure for procrastinate against the server at ``dsn`` (fresh database per run)."""
    worker_args = ("--concurrency", str(CONCURRENCY)) if CONCURRENCY is not None else ()
    peer = Peer(
        name=NAME,
        install=install,
        connect=ProcrastinateClient.connect,
        worker_module="bench.peer_procrastinate",
        worker_args=worker_args,
        settings={"concurrency": CONCURRENCY or "default (1)", "listen_notify": True},
    )
    return await run_suite(dsn, cfg, peer)


if __name__ == "__main__":
    # Re-import under the real module name: objects built here (procrastinate's App in
    # particular) must not live in __main__, or the library warns and task paths differ.
    from bench import peer_procrastinate as _driver

    sys.exit(
        peer_main(
            sys.argv[1:],
            name="peer_procrastinate",
            run=_driver.run,
            serve=_driver.serve,
            add_worker_arguments=_driver._add_worker_arguments,
        )
    )
