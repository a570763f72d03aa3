"""What flow control costs a claim in a queue without limits: SQL-only A/B across migrations.

``python -m bench.claim_ab [--dsn URL] [--rounds N] [--tasks N] [--variants 0004,0005,head]``

One session submits ``--tasks`` tasks (one ``submit_tasks`` call, not timed), checkpoints, then
drains them the way a worker does: ``finish_and_claim(claim_max => 100)`` finishing the batch it
claimed last, until nothing is left (timed). No worker processes, no NOTIFY, no Python per
task: the figure is the SQL of the claim/finish path and nothing else.

Variants are databases migrated up to a version (``pgtasks.migrations.migrate_url(up_to=N)``):
``0004`` (before flow control), ``0005`` (flow control as first shipped), ``0007`` (the last
before 0008), ``head`` (every file in sql/), and ``head_limited`` (head, with the queue given
a ``max_running`` it never reaches: the limited path's cost).

Each round builds one fresh database per variant and drains them interleaved, one call of
each variant in turn (the order reversed every other round), so whatever else runs on the
shared machine falls on every variant alike. Reported per variant: tasks/s (its calls'
wall-clock time) and its backend's CPU time per task (from /proc, so the server must run on
this machine), median [min-max] over the rounds, and the median [min-max] of the per-round
ratios to the first variant: read those, the medians of a busy machine drift by 20 %.
docs/flow-control.md ("what it costs") quotes its output.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Sequence

import asyncpg

from bench.common import fresh_database
from bench.server import benchmark_server, machine_load, provenance
from pgtasks.migrations import migrate_url

TASK = "bench.noop"
WORKER = "claim-ab-1"


@dataclasses.dataclass(frozen=True)
class Variant:
    up_to: int | None  # None: every migration in sql/
    max_running: int | None = None  # set on the queue before the drain (limited path)


VARIANTS: dict[str, Variant] = {
    "0004": Variant(up_to=4),
    "0005": Variant(up_to=5),
    "0007": Variant(up_to=7),
    "head": Variant(up_to=None),
    "head_limited": Variant(up_to=None, max_running=1_000_000),
}


def _cpu_ns(pid: int) -> int:
    """Nanoseconds the process has spent on a CPU (Linux; the server must be local)."""
    with open(f"/proc/{pid}/schedstat") as fh:
        return int(fh.read().split()[0])


class Drain:
    """One variant's database, filled with ready tasks, drained one call at a time."""

    def __init__(self, name: str, conn: asyncpg.Connection, stmt: asyncpg.PreparedStatement):
        self.name, self.conn, self.stmt = name, conn, stmt
        self.ids: list[int] = []
        self.attempts: list[int] = []
        self.seconds = 0.0
        self.cpu_ns = 0
        self.done = False
        self.backend = 0

    @classmethod
    async def prepare(cls, name: str, db: str, variant: Variant, tasks: int) -> Drain:
        await migrate_url(db, up_to=variant.up_to)
        conn = await asyncpg.connect(db)
        if variant.max_running is not None:
            await conn.execute(
                "SELECT pgtasks.configure_queue(queue => 'default', max_running => $1)",
                variant.max_running,
            )
        await conn.execute(
            "SELECT count(*) FROM pgtasks.submit_tasks(task_type => $1, params_list => "
            "ARRAY(SELECT jsonb_build_object('seq', g) FROM generate_series(1, $2) g))",
            TASK,
            tasks,
        )
        stmt = await conn.prepare(
            "SELECT id, attempt FROM pgtasks.finish_and_claim(worker_id => $1, "
            "task_ids => $2, attempts => $3, results => $4::jsonb[], claim_max => $5) "
            "WHERE rejected_task_id IS NULL"
        )
        drain = cls(name, conn, stmt)
        drain.backend = await conn.fetchval("SELECT pg_backend_pid()")
        return drain

    async def step(self, batch: int) -> None:
        """Finish the batch claimed last and claim the next: one call, timed."""
        cpu = _cpu_ns(self.backend)
        start = time.perf_counter()
        rows = await self.stmt.fetch(WORKER, self.ids, self.attempts, [None] * len(self.ids), batch)
        self.seconds += time.perf_counter() - start
        self.cpu_ns += _cpu_ns(self.backend) - cpu
        self.ids = [r["id"] for r in rows]
        self.attempts = [r["attempt"] for r in rows]
        self.done = not rows

    async def check(self) -> None:
        left = await self.conn.fetchval("SELECT count(*) FROM pgtasks.tasks WHERE status <> 'DONE'")
        if left:
            raise RuntimeError(f"{self.name}: {left} tasks not DONE after the drain")


async def drain_round(
    dsn: str, names: Sequence[str], tasks: int, batch: int
) -> dict[str, tuple[float, float]]:
    """Drain one fresh database per variant, the calls interleaved (one call of each variant
    in turn), so that whatever else the machine does falls on every variant alike.

    Returns, per variant, tasks/s (the sum of its calls' wall-clock time) and the server CPU
    its backend spent per task (us, from /proc: the server must run on this machine).
    """
    async with contextlib.AsyncExitStack() as stack:
        drains: list[Drain] = []
        for name in names:
            db = await stack.enter_async_context(fresh_database(dsn, f"claim_ab_{name}"))
            drain = await Drain.prepare(name, db, VARIANTS[name], tasks)
            stack.push_async_callback(drain.conn.close)
            drains.append(drain)
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute("CHECKPOINT")
        finally:
            await admin.close()
        while not all(d.done for d in drains):
            for d in drains:
                if not d.done:
                    await d.step(batch)
        for d in drains:
            await d.check()
        return {d.name: (tasks / d.seconds, d.cpu_ns / 1000 / tasks) for d in drains}


def _summary(values: Sequence[float], firsts: Sequence[float], digits: int) -> dict:
    """Median [min-max], and the median of the per-round ratios to the first variant (each
    round's pair ran interleaved, so the ratio cancels most of the machine's drift)."""
    ratios = [v / f for v, f in zip(values, firsts, strict=True)]
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "vs_first": round(statistics.median(ratios), 3),
        "vs_first_min": round(min(ratios), 3),
        "vs_first_max": round(max(ratios), 3),
        "samples": [round(x, digits) for x in values],
    }


async def run(dsn: str, names: Sequence[str], rounds: int, tasks: int, batch: int) -> dict:
    rates: dict[str, list[float]] = {n: [] for n in names}
    cpus: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        # Alternate the order too, so no variant always runs right after the same one.
        order = list(names) if r % 2 == 0 else list(reversed(names))
        for name, (rate, cpu) in (await drain_round(dsn, order, tasks, batch)).items():
            rates[name].append(rate)
            cpus[name].append(cpu)
            print(
                f"round {r + 1}: {name:<13} {rate:>9,.0f} tasks/s {cpu:6.1f} us/task server CPU",
                file=sys.stderr,
                flush=True,
            )
    return {
        name: {
            "tasks_per_s": _summary(rates[name], rates[names[0]], 0),
            "server_cpu_us_per_task": _summary(cpus[name], cpus[names[0]], 1),
        }
        for name in names
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.claim_ab")
    parser.add_argument("--dsn", help="an existing server (default: a private embedded one)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100, help="claim_max of each call")
    parser.add_argument("--variants", default="0004,0005,0007,head,head_limited")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    load_before = machine_load()
    with benchmark_server(args.dsn) as dsn:
        result = asyncio.run(run(dsn, names, args.rounds, args.tasks, args.batch))
    print(
        f"{args.tasks:,} tasks, finish_and_claim(claim_max => {args.batch}), "
        f"{args.rounds} rounds: median [min-max], (x median of the per-round ratios to "
        f"{names[0]} [min-max])"
    )
    for name, f in result.items():
        r, c = f["tasks_per_s"], f["server_cpu_us_per_task"]
        print(
            f"  {name:<13} {r['median']:>9,.0f} [{r['min']:,.0f}-{r['max']:,.0f}] tasks/s "
            f"(x{r['vs_first']:.3f} [{r['vs_first_min']:.3f}-{r['vs_first_max']:.3f}]); "
            f"server CPU {c['median']:.1f} [{c['min']:.1f}-{c['max']:.1f}] us/task "
            f"(x{c['vs_first']:.3f} [{c['vs_first_min']:.3f}-{c['vs_first_max']:.3f}])"
        )
    if args.json:
        payload = {
            "rounds": args.rounds,
            "tasks": args.tasks,
            "batch": args.batch,
            "code": provenance(),
            "load_before": load_before,
            "load_after": machine_load(),
            "variants": result,
        }
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=2)
            fh.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
