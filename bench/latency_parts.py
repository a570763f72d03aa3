"""Where an idle worker's enqueue -> start latency goes: the round trips it is made of.

``python -m bench.latency_parts [--dsn URL] [--rounds N] [--gap-ms MS]``

`make bench`'s latency figure is one number: the time from a client's ``submit`` to the
task's start in an idle worker that LISTENs. Its path holds two commits in a row: the
submit's, then the claim's (the claim must be durable before the task runs, or a crash
could hand the same attempt to two workers). This measures each step alone, on the same
kind of server, from one connection with a pause of ``--gap-ms`` between calls (the
processes go idle, as in the latency figure, where tasks arrive every 20 ms), and again
back to back (warm):

* ``SELECT 1``: a round trip that does nothing;
* ``submit_task``: one task, committed (what the client waits for);
* ``claim_tasks``: a claim that takes that task, committed (what the worker waits for);
* ``claim_tasks (empty)``: a claim that finds nothing;
* ``finish_task``: the task's outcome, committed.

The latency figure cannot be below submit + claim from idle plus the NOTIFY's hop, whatever
the worker does. Medians of ``--rounds`` calls; docs/performance.md quotes a run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from bench.common import fresh_database
from bench.peer_pgtasks import install
from bench.server import benchmark_server
from pgtasks import queries

TASK = "bench_latency_parts"
STEPS = ("SELECT 1", "submit_task", "claim_tasks", "claim_tasks (empty)", "finish_task")


async def _timed(call: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = await call()
    return (time.perf_counter() - started) * 1000, out


async def measure(dsn: str, rounds: int, gap_ms: float) -> dict[str, dict[str, float]]:
    """{step: {"idle": median ms, "warm": median ms}}."""
    out: dict[str, dict[str, float]] = {}
    async with fresh_database(dsn, "latency_parts") as db:
        await install(db)
        client = await asyncpg.connect(db)
        worker = await asyncpg.connect(db)
        try:
            for mode, gap in (("warm", 0.0), ("idle", gap_ms / 1000)):
                times: dict[str, list[float]] = {s: [] for s in STEPS}
                for _ in range(rounds):
                    steps: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
                        ("SELECT 1", lambda: client.fetchval("SELECT 1")),
                        (
                            "submit_task",
                            lambda: client.fetchval(
                                "SELECT pgtasks.submit_task(task_type => $1)", TASK
                            ),
                        ),
                        (
                            "claim_tasks",
                            lambda: worker.fetch(
                                queries.CLAIM_TASKS, "latency-parts", None, 10, None, [TASK]
                            ),
                        ),
                    ]
                    claimed: Sequence[Any] = ()
                    for name, call in steps:
                        if gap:
                            await asyncio.sleep(gap)
                        ms, result = await _timed(call)
                        times[name].append(ms)
                        if name == "claim_tasks":
                            claimed = result
                    if gap:
                        await asyncio.sleep(gap)
                    ms, _ = await _timed(
                        lambda: worker.fetch(
                            queries.CLAIM_TASKS, "latency-parts", None, 10, None, [TASK]
                        )
                    )
                    times["claim_tasks (empty)"].append(ms)
                    (row,) = claimed
                    if gap:
                        await asyncio.sleep(gap)
                    ms, _ = await _timed(
                        lambda row=row: worker.fetchval(
                            "SELECT pgtasks.finish_task(task_id => $1, attempt => $2)",
                            row["id"],
                            row["attempt"],
                        )
                    )
                    times["finish_task"].append(ms)
                for name, values in times.items():
                    out.setdefault(name, {})[mode] = statistics.median(values)
        finally:
            await client.close()
            await worker.close()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency_parts")
    parser.add_argument("--dsn", help="an existing server (default: a private embedded one)")
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--gap-ms", type=float, default=5.0)
    args = parser.parse_args(argv)
    with benchmark_server(args.dsn) as dsn:
        parts = asyncio.run(measure(dsn, args.rounds, args.gap_ms))
    print(f"median ms of {args.rounds} calls; idle = {args.gap_ms:g} ms pause before each call")
    print(f"{'step':<22}{'idle':>8}{'warm':>8}")
    for name in STEPS:
        print(f"{name:<22}{parts[name]['idle']:>8.2f}{parts[name]['warm']:>8.2f}")
    floor = parts["submit_task"]["idle"] + parts["claim_tasks"]["idle"]
    print(f"submit + claim, idle: {floor:.2f} ms (enqueue -> start cannot be less)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
