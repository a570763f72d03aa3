"""What pgtasks is held against besides its peers, each measured in the run that judges it:
``floor`` (:func:`sample_floor`, in rounds with the latency of pgtasks and PgQueuer),
``ceiling`` (:func:`ceiling_loop`, in rounds with ``drain_1``), ``filtered``
(:func:`sample_filtered`), ``bulk`` (every system's batch API in rounds). A round runs its
sides back to back, the order reversed every round (``harness.alternate``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
import json
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from bench.harness import (
    BenchConfig,
    Figure,
    Log,
    alternate,
    figures,
    fresh_database,
    p50_p99,
    rate,
    sample_drain,
    sample_enqueue_batch,
    sample_latency,
)
from bench.peer_pgtasks import TASK, PgTasksClient, install, make_peer
from pgtasks import Worker, queries

SCENARIOS = ("floor", "ceiling", "filtered", "bulk")

_FLOOR_SETUP = """
CREATE TABLE bench_floor (id bigserial PRIMARY KEY, payload jsonb NOT NULL,
                          claimed boolean NOT NULL DEFAULT false);
CREATE INDEX bench_floor_ready ON bench_floor (id) WHERE NOT claimed;
"""
_FLOOR_INSERT = """
WITH j AS (INSERT INTO bench_floor (payload) VALUES ($1::jsonb) RETURNING id)
SELECT pg_notify('bench_floor', id::text) FROM j
"""
_FLOOR_CLAIM = """
UPDATE bench_floor SET claimed = true
 WHERE id = (SELECT id FROM bench_floor WHERE NOT claimed ORDER BY id
              LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING id
"""
#: A pgtasks job that waited for its worker's poll instead of a wake-up. A lost wake-up leaves
#: the job until the poll ends, which started when the worker last went idle (at most one job
#: gap earlier): it waits nearly the whole interval, never more. Half of it is 50x the
#: wake-up path, so nothing but a missed wake-up (or a stalled machine) gets there.
POLL_INTERVAL_S = float(inspect.signature(Worker).parameters["poll_interval"].default)
TAIL_MS = POLL_INTERVAL_S * 1000 / 2


async def sample_floor(dsn: str, cfg: BenchConfig) -> list[float]:
    """Milliseconds from before a bare INSERT that NOTIFYs in the same statement (one durable
    commit) to the return of a bare SKIP LOCKED claim a second connection sends once woken; in
    this process, on the latency figure's schedule (a settle, warm-ups, jobs 20 ms apart)."""
    async with fresh_database(dsn, "floor") as db:
        submitter, claimer = await asyncpg.connect(db), await asyncpg.connect(db)
        try:
            await submitter.execute(_FLOOR_SETUP)
            woken = asyncio.Event()
            await claimer.add_listener("bench_floor", lambda *_: woken.set())
            await asyncio.sleep(cfg.settle_s)  # as the latency figure's workers settle
            out: list[float] = []
            start, gap = time.perf_counter(), cfg.latency_gap_ms / 1000
            for i, seq in enumerate(range(-cfg.latency_warmup, cfg.latency_jobs)):
                await asyncio.sleep(max(0.0, start + i * gap - time.perf_counter()))
                woken.clear()
                t0 = time.perf_counter()
                await submitter.execute(_FLOOR_INSERT, json.dumps({"seq": seq}))
                await asyncio.wait_for(woken.wait(), cfg.timeout_s)
                if await claimer.fetchval(_FLOOR_CLAIM) is None:
                    raise RuntimeError("the floor's claim found no job after its NOTIFY")
                if seq >= 0:
                    out.append((time.perf_counter() - t0) * 1000)
        finally:
            await submitter.close()
            await claimer.close()
    return out


async def ceiling_loop(conn: asyncpg.Connection, worker_id: str, slots: int) -> int:
    """The worker's statements (pgtasks/queries.py) with no framework: claim ``slots`` tasks,
    then finish them and claim the next batch in one call, until a call claims none; returns
    the tasks finished. The only code to adapt when those functions' signatures change."""
    rows = await conn.fetch(queries.CLAIM_TASKS, worker_id, None, slots, None, [TASK])
    done = 0
    while rows:
        ids, tokens = [r["id"] for r in rows], [r["lease_token"] for r in rows]
        args = (ids, tokens, ["null"] * len(ids), slots, None, None, [TASK])
        rows = await conn.fetch(queries.FINISH_AND_CLAIM, worker_id, *args)
        if any(r["rejected_task_id"] is not None for r in rows):
            raise RuntimeError("the ceiling's own results were rejected")
        done += len(ids)
    return done


async def sample_ceiling(dsn: str, cfg: BenchConfig) -> float:
    """jobs/s of :func:`ceiling_loop` on ``ceiling_connections`` connections emptying a queue
    of ``drain_jobs`` tasks, submitted first in one batch like ``drain_1``'s; from the first
    claim to the last call."""
    n = cfg.ceiling_connections
    async with fresh_database(dsn, "pgtasks_ceiling") as db:
        await install(db)
        client = await PgTasksClient.connect(db)
        conns = [await asyncpg.connect(db) for _ in range(n)]
        try:
            await client.enqueue_many(range(cfg.drain_jobs))
            started = time.perf_counter()
            loops = (ceiling_loop(c, f"bench-ceiling-{i}", 100 // n) for i, c in enumerate(conns))
            done = sum(await asyncio.gather(*loops))
            elapsed = time.perf_counter() - started
            if done != cfg.drain_jobs or await client.outstanding():
                raise RuntimeError(f"the ceiling finished {done} of {cfg.drain_jobs} tasks")
        finally:
            for c in conns:
                await c.close()
            await client.close()
    return rate(done, elapsed)


_LOAD = """
SELECT count(*) FROM pgtasks.submit_tasks(
    $1, ARRAY(SELECT jsonb_build_object('seq', g) FROM generate_series(1, $2::int) g))
"""


async def sample_filtered(dsn: str, cfg: BenchConfig) -> tuple[list[float], list[float]]:
    """(filtered, unfiltered) ms per ``claim_tasks`` call of ``filtered_claim_max`` tasks,
    behind a backlog of type ``bench_other`` submitted first (then VACUUM ANALYZE); the calls
    alternate, the order flipped every pair, after ``latency_warmup`` untimed pairs."""
    size, warm = cfg.filtered_claim_max, cfg.latency_warmup
    times: tuple[list[float], list[float]] = ([], [])
    async with fresh_database(dsn, "pgtasks_filtered") as db:
        await install(db)
        conn = await asyncpg.connect(db)
        try:
            await conn.fetchval(_LOAD, "bench_other", cfg.filtered_backlog)
            await conn.fetchval(_LOAD, TASK, (cfg.filtered_claims + warm) * size)
            await conn.execute("VACUUM ANALYZE pgtasks.tasks")
            for i in range(-warm, cfg.filtered_claims):
                for side in (0, 1) if i % 2 == 0 else (1, 0):
                    t0 = time.perf_counter()
                    types = [TASK] if side == 0 else None
                    rows = await conn.fetch(queries.CLAIM_TASKS, "bench", None, size, None, types)
                    if i >= 0:
                        times[side].append((time.perf_counter() - t0) * 1000)
                    if len(rows) != size or (side == 0 and rows[0]["task_type"] != TASK):
                        raise RuntimeError(f"claim {i} got {len(rows)} tasks, not {size}")
        finally:
            await conn.close()
    return times


def _peer(system: str) -> Any:
    return importlib.import_module(f"bench.peer_{system}").make_peer()


async def run(
    dsn: str, cfg: BenchConfig, systems: Sequence[str], only: set[str], say: Log
) -> dict[str, dict[str, Figure]]:
    """The scenarios in ``only`` (of :data:`SCENARIOS`), by system; PgQueuer's side of a
    round only when it is in ``systems``."""
    values: dict[str, dict[str, list[float]]] = {s: {} for s in ("pgtasks", *systems)}

    def add(key: str, value: float, system: str = "pgtasks") -> None:
        values[system].setdefault(key, []).append(value)

    theirs = "pgqueuer" in systems
    if "floor" in only:
        peers = [_peer("pgtasks"), *([_peer("pgqueuer")] if theirs else [])]
        sides = [lambda: sample_floor(dsn, cfg)]
        sides += [lambda p=p: sample_latency(p, dsn, cfg) for p in peers]
        async for i, (floor, lat, *peer) in alternate(cfg.runs, *sides):
            (f50, f99), (p50, p99) = p50_p99(floor), p50_p99(lat)
            tail = sum(v > TAIL_MS for v in lat)
            add("floor_p50_ms", f50)
            add("floor_p99_ms", f99)
            add("latency_p50_rounds_ms", p50)
            add("latency_p99_rounds_ms", p99)
            add("latency_p50_over_floor", p50 / f50)
            add("latency_p99_over_floor", p99 / f99)
            add("latency_tail_count", tail)
            add("latency_tail_max_ms", max(lat))
            line = f"floor {f50:.1f}/{f99:.1f}, pgtasks {p50:.1f}/{p99:.1f}"
            if peer:
                q50, q99 = p50_p99(peer[0])
                add("latency_p50_rounds_ms", q50, "pgqueuer")
                add("latency_p99_rounds_ms", q99, "pgqueuer")
                add("latency_p50_over_pgqueuer", p50 / q50)
                add("latency_p99_over_pgqueuer", p99 / q99)
                line += f", PgQueuer {q50:.1f}/{q99:.1f} ({p50 / q50:.2f}x/{p99 / q99:.2f}x)"
            say(f"[floor] round {i + 1}: p50/p99 ms {line}; {tail} over {TAIL_MS:.0f} ms")
    if "ceiling" in only:
        worker = make_peer()
        sides = [lambda: sample_ceiling(dsn, cfg), lambda: sample_drain(worker, dsn, cfg, 1)]
        async for i, (ceiling, sample) in alternate(cfg.runs, *sides):
            drain = float(sample.rate)  # a strict drain finishes or raises
            add("ceiling_jobs_per_s", ceiling)
            add("ceiling_drain_1", drain)
            add("drain_1_over_ceiling", drain / ceiling)
            say(f"[ceiling] round {i + 1}: raw {ceiling:,.0f}, worker {drain:,.0f} jobs/s")
    if "filtered" in only:
        for i in range(cfg.runs):
            filtered, unfiltered = await sample_filtered(dsn, cfg)
            shown = []
            for name, times in (("filtered", filtered), ("unfiltered", unfiltered)):
                for key, v in zip(("p50", "p99"), p50_p99(times), strict=True):
                    add(f"{name}_claim_{key}_ms", v)
                    shown.append(f"{name} {key} {v:.2f}")
            say(f"[filtered] run {i + 1}: {', '.join(shown)} ms")
    if "bulk" in only:
        size = dataclasses.replace(cfg, batch_jobs=cfg.bulk_jobs, batch_size=cfg.bulk_chunk)
        names = ["pgtasks", *(s for s in systems if s != "pgtasks")]
        bulk = {s: _peer(s) for s in names}
        sides = [lambda p=bulk[s]: sample_enqueue_batch(p, dsn, size) for s in names]
        async for i, rates in alternate(cfg.runs, *sides):
            for system, r in zip(names, rates, strict=True):
                add("bulk_submit", r, system)
            if theirs:
                add("bulk_over_pgqueuer", rates[0] / rates[names.index("pgqueuer")])
            shown = ", ".join(f"{s} {r:,.0f}" for s, r in zip(names, rates, strict=True))
            say(f"[bulk] round {i + 1}: {shown} jobs/s")
    return {system: figures(v) for system, v in values.items() if v}
