"""pgtasks' workflow figures (``wf_*``, bench/README.md), with the drain_1 worker: plain tasks
and a chord's children in pairs whose order flips every round (``_2``: two worker processes,
whose completers share the callback row), rates by the database's own clock (tasks / (last
finished_at - first started_at)); the callback's delay and writes; a chain's hand-offs.
"""

from __future__ import annotations

import asyncio
import statistics

import asyncpg

from bench.harness import (
    BenchConfig,
    Figure,
    Log,
    alternate,
    figures,
    fresh_database,
    harness_dsn,
    running_workers,
)
from bench.peer_pgtasks import TASK, install, make_peer
from pgtasks import Client

RATE_SQL = """
SELECT count(*) / extract(epoch FROM max(finished_at) - min(started_at))
  FROM pgtasks.tasks WHERE status = 'DONE' AND id = ANY($1::bigint[])
"""
DONE_SQL = "SELECT count(*) = $2 FROM pgtasks.tasks WHERE status = 'DONE' AND id = ANY($1)"
FINISHED_SQL = "SELECT state <> 'running' FROM pgtasks.workflows WHERE id = $1"
CALLBACK_DELAY_SQL = """
SELECT extract(epoch FROM cb.started_at - (SELECT max(t.finished_at) FROM pgtasks.tasks t
                                            WHERE t.id = ANY($2::bigint[]))) * 1000
  FROM pgtasks.tasks cb WHERE cb.id = $1
"""
# finished_at is the finishing transaction's start: one value per completer statement.
CALLBACK_WRITES_SQL = "SELECT count(DISTINCT finished_at) FROM pgtasks.tasks WHERE id = ANY($1)"
HANDOFFS_SQL = """
SELECT extract(epoch FROM c.started_at - p.finished_at) * 1000
  FROM pgtasks.task_edges e
  JOIN pgtasks.tasks p ON p.id = e.parent_id
  JOIN pgtasks.tasks c ON c.id = e.child_id
 WHERE c.workflow_id = $1
"""


async def _wait_until(pool: asyncpg.Pool, timeout: float, sql: str, *args: object) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await pool.fetchval(sql, *args):
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"not reached within {timeout}s: {sql}")
        await asyncio.sleep(0.02)


async def plain_drain(dsn: str, cfg: BenchConfig, workers: int) -> float:
    """jobs/s of ``chord_children`` plain tasks, by the database's clock."""
    async with fresh_database(dsn, "pgtasks") as db:
        await install(db)
        async with Client(harness_dsn(db)) as c, running_workers(make_peer(), db, workers, cfg):
            ids = await c.submit_many(TASK, [{"seq": i} for i in range(cfg.chord_children)])
            await _wait_until(c.pool, cfg.timeout_s, DONE_SQL, ids, cfg.chord_children)
            return float(await c.pool.fetchval(RATE_SQL, ids))


async def chord_drain(dsn: str, cfg: BenchConfig, workers: int) -> tuple[float, float, int]:
    """(children's jobs/s, callback delay ms, callback row writes) of one chord."""
    async with fresh_database(dsn, "pgtasks") as db:
        await install(db)
        async with Client(harness_dsn(db)) as c, running_workers(make_peer(), db, workers, cfg):
            nodes: list[dict[str, object]] = [
                {"name": f"c{i}", "type": TASK, "params": {"seq": i}}
                for i in range(cfg.chord_children)
            ]
            after = [n["name"] for n in nodes]
            nodes.append({"name": "cb", "type": TASK, "params": {"seq": -1}, "after": after})
            wf = await c.submit_workflow({"name": "bench-chord", "nodes": nodes})
            await _wait_until(c.pool, cfg.timeout_s, FINISHED_SQL, int(wf))
            kids = [v for k, v in wf.nodes.items() if k != "cb"]
            return (
                float(await c.pool.fetchval(RATE_SQL, kids)),
                float(await c.pool.fetchval(CALLBACK_DELAY_SQL, wf.nodes["cb"], kids)),
                int(await c.pool.fetchval(CALLBACK_WRITES_SQL, kids)),
            )


async def chain_handoff(dsn: str, cfg: BenchConfig) -> float:
    """Median hand-off (ms) of a chain of ``chain_steps`` tasks, one listening worker."""
    async with fresh_database(dsn, "pgtasks") as db:
        await install(db)
        async with Client(harness_dsn(db)) as c, running_workers(make_peer(), db, 1, cfg):
            nodes = [
                {"name": f"s{i}", "type": TASK, "params": {"seq": i},
                 "after": [f"s{i - 1}"] if i else []}
                for i in range(cfg.chain_steps)
            ]  # fmt: skip
            wf = await c.submit_workflow({"name": "bench-chain", "nodes": nodes})
            await _wait_until(c.pool, cfg.timeout_s, FINISHED_SQL, int(wf))
            return statistics.median(float(r[0]) for r in await c.pool.fetch(HANDOFFS_SQL, int(wf)))


async def run(dsn: str, cfg: BenchConfig, say: Log) -> dict[str, Figure]:
    out: dict[str, list[float]] = {}
    for workers, suffix in ((1, ""), (2, "_2")):
        async for i, (plain, (chord, delay, writes)) in alternate(
            cfg.runs,
            lambda w=workers: plain_drain(dsn, cfg, w),
            lambda w=workers: chord_drain(dsn, cfg, w),
        ):
            out.setdefault(f"wf_plain_drain{suffix}", []).append(plain)
            out.setdefault(f"wf_chord_children{suffix}", []).append(chord)
            out.setdefault(f"wf_chord_ratio{suffix}", []).append(chord / plain)
            if workers == 1:
                out.setdefault("wf_chord_callback_delay_ms", []).append(delay)
                out.setdefault("wf_chord_callback_writes", []).append(writes)
            say(
                f"[pgtasks] workflows round {i + 1}, {workers} worker(s): plain {plain:,.0f}, "
                f"chord of {cfg.chord_children:,} {chord:,.0f} jobs/s ({chord / plain:.2f}) in "
                f"{writes} statements, callback after {delay:.1f} ms"
            )
    for i in range(cfg.runs):
        out.setdefault("wf_chain_handoff_p50_ms", []).append(await chain_handoff(dsn, cfg))
        say(
            f"[pgtasks] chain hand-off run {i + 1}: p50 {out['wf_chain_handoff_p50_ms'][-1]:.2f} ms"
        )
    return figures(out)
