"""Workflow figures for `make bench` (issue 12), pgtasks only.

* ``wf_plain_drain`` / ``wf_chord_children``: one worker (the drain_1 peer) emptying
  ``chord_children`` plain tasks, and the same number of tasks as the children of one chord
  (plus its callback), measured in alternating pairs so drift falls on both sides (``_2``:
  the same with two worker processes, whose completers share the callback row). Both
  rates come from the database's own timestamps: tasks / (last finished_at - first
  started_at). Their ratio is issue 12's ">= 70 % of the plain drain".
* ``wf_chord_callback_delay_ms``: the callback's started_at minus the last child's
  finished_at (both database clocks: the claim's and the finishing transaction's).
* ``wf_chord_callback_writes``: how many statements finished the children, which is how
  many times the callback row (the fan-in's hot row) was written; one per child would
  be ``chord_children``.
* ``wf_chain_handoff_p50_ms``: a chain of ``chain_steps`` single-task steps with a
  listening worker; per step, child started_at minus parent finished_at; the median.
* ``wf_ab_drain_0009`` / ``wf_ab_drain_latest``: what workflows cost tasks that use none:
  the standard drain_1 (bench/common.py) in a database migrated up to 0009 (before
  workflows) and in one with every migration, in alternating pairs.

Run alone (its own embedded server): ``python -m bench.workflows [--runs N] [--scale F]``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
from collections.abc import Callable

import asyncpg

from bench.common import (
    JOBS_PER_S,
    MS,
    BenchConfig,
    Figure,
    fresh_database,
    harness_dsn,
    sample_drain,
)
from bench.common import running_workers as _running_workers
from bench.peer_pgtasks import TASK, install, make_peer
from bench.server import benchmark_server
from pgtasks import Client
from pgtasks.migrations import migrate_url

CHORD_CHILDREN = 10_000
CHAIN_STEPS = 100

# Rate of a set of tasks from the database's own clock.
RATE_SQL = """
SELECT count(*) / extract(epoch FROM max(finished_at) - min(started_at))
  FROM pgtasks.tasks WHERE status = 'DONE' AND id = ANY($1::bigint[])
"""

CALLBACK_DELAY_SQL = """
SELECT extract(epoch FROM cb.started_at - (SELECT max(t.finished_at) FROM pgtasks.tasks t
                                            WHERE t.id = ANY($2::bigint[]))) * 1000
  FROM pgtasks.tasks cb WHERE cb.id = $1
"""

# The statements that finished the children: each wrote the callback row once (finished_at
# is the finishing transaction's start, one value per completer statement).
CALLBACK_WRITES_SQL = """
SELECT count(DISTINCT finished_at) FROM pgtasks.tasks WHERE id = ANY($1::bigint[])
"""

HANDOFFS_SQL = """
SELECT extract(epoch FROM c.started_at - p.finished_at) * 1000
  FROM pgtasks.task_edges e
  JOIN pgtasks.tasks p ON p.id = e.parent_id
  JOIN pgtasks.tasks c ON c.id = e.child_id
 WHERE c.workflow_id = $1
"""


async def _wait_until(conn: asyncpg.Connection, sql: str, *args: object, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await conn.fetchval(sql, *args):
        if loop.time() > deadline:
            raise TimeoutError(f"not reached within {timeout}s: {sql}")
        await asyncio.sleep(0.02)


async def sample_pair(
    dsn: str, cfg: BenchConfig, children: int, workers: int = 1
) -> tuple[float, float, float, int]:
    """(plain jobs/s, chord children jobs/s, callback delay ms, callback row writes), each
    drain in a fresh database."""
    peer = make_peer()
    async with fresh_database(dsn, "pgtasks") as db:
        await install(db)
        async with Client(harness_dsn(db)) as c, _running_workers(peer, db, workers, cfg):
            ids = await c.submit_many(TASK, [{"seq": i} for i in range(children)])
            probe = c.pool
            await _wait_until(
                probe, "SELECT count(*) = $2 FROM pgtasks.tasks WHERE status = 'DONE' "
                "AND id = ANY($1::bigint[])", ids, children, timeout=cfg.timeout_s,
            )  # fmt: skip
            plain = float(await probe.fetchval(RATE_SQL, ids))
    async with fresh_database(dsn, "pgtasks") as db:
        await install(db)
        async with Client(harness_dsn(db)) as c, _running_workers(peer, db, workers, cfg):
            nodes = [{"name": f"c{i}", "type": TASK, "params": {"seq": i}} for i in range(children)]
            nodes.append({"name": "cb", "type": TASK, "params": {"seq": -1},
                          "after": [n["name"] for n in nodes]})  # fmt: skip
            wf = await c.submit_workflow({"name": "bench-chord", "nodes": nodes})
            await _wait_until(
                c.pool, "SELECT state <> 'running' FROM pgtasks.workflows WHERE id = $1",
                int(wf), timeout=cfg.timeout_s,
            )  # fmt: skip
            kids = [v for k, v in wf.nodes.items() if k != "cb"]
            chord = float(await c.pool.fetchval(RATE_SQL, kids))
            delay = float(await c.pool.fetchval(CALLBACK_DELAY_SQL, wf.nodes["cb"], kids))
            writes = int(await c.pool.fetchval(CALLBACK_WRITES_SQL, kids))
    return plain, chord, delay, writes


async def sample_chain(dsn: str, cfg: BenchConfig, steps: int) -> float:
    """Median hand-off (ms) of a chain of `steps` tasks, one listening worker."""
    async with fresh_database(dsn, "pgtasks") as db:
        await install(db)
        async with Client(harness_dsn(db)) as c, _running_workers(make_peer(), db, 1, cfg):
            nodes = [{"name": f"s{i}", "type": TASK, "params": {"seq": i},
                      "after": [f"s{i - 1}"] if i else []} for i in range(steps)]  # fmt: skip
            wf = await c.submit_workflow({"name": "bench-chain", "nodes": nodes})
            await _wait_until(
                c.pool, "SELECT state <> 'running' FROM pgtasks.workflows WHERE id = $1",
                int(wf), timeout=cfg.timeout_s,
            )  # fmt: skip
            handoffs = [float(r[0]) for r in await c.pool.fetch(HANDOFFS_SQL, int(wf))]
    return statistics.median(handoffs)


async def install_before_workflows(dsn: str) -> None:
    """The schema as it was before workflows (0009: everything up to flow-control fixes)."""
    await migrate_url(dsn, up_to=9)


async def sample_ab(dsn: str, cfg: BenchConfig) -> tuple[float, float]:
    """(drain_1 jobs/s before workflows, drain_1 jobs/s with them), back to back."""
    before = await sample_drain(make_peer(install_fn=install_before_workflows), dsn, cfg, 1)
    after = await sample_drain(make_peer(), dsn, cfg, 1)
    return before, after


async def run_ab(
    dsn: str, cfg: BenchConfig, log: Callable[[str], None] | None = None
) -> dict[str, Figure]:
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    before, after = [], []
    for i in range(cfg.runs):
        b, a = await sample_ab(dsn, cfg)
        before.append(b)
        after.append(a)
        say(f"[pgtasks] plain drain_1 pair {i + 1}: 0009 {b:,.0f}, latest {a:,.0f} jobs/s")
    return {
        "wf_ab_drain_0009": Figure.of(before, JOBS_PER_S),
        "wf_ab_drain_latest": Figure.of(after, JOBS_PER_S),
        "wf_ab_ratio": Figure.of([a / b for a, b in zip(after, before, strict=True)], "x"),
    }


async def run(
    dsn: str, cfg: BenchConfig, log: Callable[[str], None] | None = None, *, scale: float = 1.0
) -> dict[str, Figure]:
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    children = max(100, int(CHORD_CHILDREN * scale))
    plain, chord, delays, handoffs, writes = [], [], [], [], []
    plain2: list[float] = []
    chord2: list[float] = []
    for i in range(cfg.runs):
        p, ch, d, w = await sample_pair(dsn, cfg, children)
        plain.append(p)
        chord.append(ch)
        delays.append(d)
        writes.append(w)
        handoffs.append(await sample_chain(dsn, cfg, CHAIN_STEPS))
        p2, ch2, _, w2 = await sample_pair(dsn, cfg, children, workers=2)
        plain2.append(p2)
        chord2.append(ch2)
        say(
            f"[pgtasks] workflows run {i + 1}: plain {p:,.0f} jobs/s, chord of {children:,} "
            f"{ch:,.0f} jobs/s ({ch / p:.2f}) in {w} statements, callback after {d:.1f} ms, "
            f"chain hand-off p50 {handoffs[-1]:.2f} ms; 2 workers: plain {p2:,.0f}, "
            f"chord {ch2:,.0f} jobs/s ({ch2 / p2:.2f}) in {w2} statements"
        )
    return {
        "wf_plain_drain": Figure.of(plain, JOBS_PER_S),
        "wf_chord_children": Figure.of(chord, JOBS_PER_S),
        "wf_chord_ratio": Figure.of([c / p for c, p in zip(chord, plain, strict=True)], "x"),
        "wf_chord_callback_delay_ms": Figure.of(delays, MS),
        "wf_chord_callback_writes": Figure.of(writes, "updates"),
        "wf_chain_handoff_p50_ms": Figure.of(handoffs, MS),
        "wf_plain_drain_2": Figure.of(plain2, JOBS_PER_S),
        "wf_chord_children_2": Figure.of(chord2, JOBS_PER_S),
        "wf_chord_ratio_2": Figure.of([c / p for c, p in zip(chord2, plain2, strict=True)], "x"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workflows", description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the chord's size")
    parser.add_argument("--dsn", default=None, help="an existing server instead of embedded")
    parser.add_argument("--ab", action="store_true", help="also the plain drain A/B (0009)")
    args = parser.parse_args(argv)
    cfg = dataclasses.replace(BenchConfig.from_env(), runs=args.runs)

    async def go(dsn: str) -> dict[str, Figure]:
        figures = await run(dsn, cfg, scale=args.scale)
        if args.ab:
            figures.update(await run_ab(dsn, cfg))
        return figures

    with benchmark_server(args.dsn) as dsn:
        figures = asyncio.run(go(dsn))
    for key, fig in figures.items():
        print(f"{key:<28} {fig.median:>10.2f} {fig.unit:<8} [{fig.min:.2f} - {fig.max:.2f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
