"""What each design choice bought: the shipped schema against the design it replaced.

``python -m bench.ablations [--dsn URL] [--runs N] [--json FILE]``

Each experiment builds a scratch database with the shipped migrations, then (for the "before"
variant) swaps one piece back to the earlier design, in that scratch database only: an index
predicate, the transition trigger, the wake-up trigger. The sql/ files are never touched.

* claim / finish / heartbeat: SQL level, one connection, sequential batches of 100 tasks
  through the public functions (claim_tasks, finish_tasks, heartbeat); reported in
  microseconds per task (and per call), median of ``--runs``.
* wake-ups: the same ``enqueue_single`` scenario as ``make bench`` (10 clients, one
  ``Client.submit`` per task), with one idle connection LISTENing like a worker would.

This is not part of ``make bench`` (it answers "why is the schema shaped like this", not "how
fast is pgtasks today"); docs/performance.md quotes its output.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import BenchConfig, Peer, fresh_database, sample_drain, sample_enqueue_single
from bench.peer_pgtasks import TASK, WAKEUPS_OFF, install, make_peer
from bench.server import REPO_ROOT, benchmark_server, machine_load, provenance
from pgtasks.migrations import sql_dir

BATCH = 100
LEASE = timedelta(seconds=60)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- schema variants

#: Claim indexes that cannot produce claim order: every claim must fetch all ready rows and sort.
CLAIM_WITHOUT_ORDER_INDEX = """
DROP INDEX pgtasks.tasks_claimable;
DROP INDEX pgtasks.tasks_claimable_queue;
CREATE INDEX tasks_ready_unordered ON pgtasks.tasks (run_at) WHERE status IN ('PENDING', 'COMMIT');
"""

#: The earlier lease index: its predicate names status, which made the planner hash every
#: RUNNING task for a batched finish or heartbeat.
LEASE_INDEX_ON_STATUS = """
DROP INDEX pgtasks.tasks_lease;
CREATE INDEX tasks_lease ON pgtasks.tasks (lease_expires_at) WHERE status = 'RUNNING';
"""

#: The earlier transition rule: one PL/pgSQL call per updated row that checks the transition
#: and writes its history row, instead of a WHEN clause plus one INSERT per statement.
PER_ROW_TRANSITION_TRIGGER = """
DROP TRIGGER tasks_check_transition ON pgtasks.tasks;
DROP TRIGGER tasks_record_updates ON pgtasks.tasks;
CREATE FUNCTION pgtasks.bench_per_row_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> NEW.status THEN
        IF pgtasks.transition_reason(OLD.status, NEW.status) IS NULL THEN
            RAISE EXCEPTION 'pgtasks: task % cannot go from % to %', OLD.id, OLD.status, NEW.status
                USING ERRCODE = 'PT001';
        END IF;
        INSERT INTO pgtasks.task_events (task_id, attempt, from_status, to_status, worker_id)
        VALUES (NEW.id, NEW.attempt, OLD.status, NEW.status,
                coalesce(NEW.worker_id, OLD.worker_id));
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER tasks_per_row_transition BEFORE UPDATE ON pgtasks.tasks
    FOR EACH ROW EXECUTE FUNCTION pgtasks.bench_per_row_transition();
"""

#: History rows tied to their task by a foreign key, which the shipped schema leaves out.
HISTORY_FOREIGN_KEY = """
ALTER TABLE pgtasks.task_events
    ADD CONSTRAINT task_events_task_fk FOREIGN KEY (task_id) REFERENCES pgtasks.tasks (id)
    ON DELETE CASCADE;
"""

#: The shipped wake-up (inside record_inserts since sql/0008) off, an experimental one added.
_NOTIFY_SWAP = WAKEUPS_OFF

#: One NOTIFY per inserted row, each with its own payload (so none are merged).
NOTIFY_PER_ROW = (
    _NOTIFY_SWAP
    + """
CREATE FUNCTION pgtasks.bench_notify_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgtasks_wakeup', NEW.queue || ':' || NEW.id);
    RETURN NULL;
END $$;
CREATE TRIGGER tasks_bench_wake AFTER INSERT ON pgtasks.tasks
    FOR EACH ROW EXECUTE FUNCTION pgtasks.bench_notify_row();
"""
)

#: One NOTIFY per statement and queue, always (no "head already ready" skip).
NOTIFY_PER_STATEMENT_ALWAYS = (
    _NOTIFY_SWAP
    + """
CREATE FUNCTION pgtasks.bench_notify_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgtasks_wakeup', q.queue) FROM (SELECT DISTINCT queue FROM new_rows) q;
    RETURN NULL;
END $$;
CREATE TRIGGER tasks_bench_wake AFTER INSERT ON pgtasks.tasks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pgtasks.bench_notify_statement();
"""
)

NOTIFY_OFF = WAKEUPS_OFF


def notify_before_0008() -> str:
    """0001's wake-up: a statement trigger of its own next to record_inserts (0001's too),
    its head probe grouped by queue (sql/0008 folded it into record_inserts)."""
    text = (sql_dir() / "0001_schema.sql").read_text()
    start = text.index("CREATE FUNCTION pgtasks.record_inserts()")
    end = text.index("-- Tasks start PENDING.")
    return (
        "DROP TRIGGER tasks_record_inserts ON pgtasks.tasks;\n"
        + text[start:end].replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")
        + "\nCALL pgtasks.secure_objects();"
    )


# --------------------------------------------------------------------------- SQL-level loops


@dataclasses.dataclass(frozen=True)
class Timing:
    """Microseconds per task and per call of one function over a series of batches."""

    us_per_task: float
    us_per_call: float
    calls: int

    @classmethod
    def of(cls, seconds: Sequence[float], tasks: int) -> Timing:
        total = sum(seconds)
        return cls(total / tasks * 1e6, total / len(seconds) * 1e6, len(seconds))


async def _submit(conn: asyncpg.Connection, n: int) -> None:
    await conn.execute(
        "SELECT count(*) FROM pgtasks.submit_tasks($1, "
        "ARRAY(SELECT jsonb_build_object('seq', g) FROM generate_series(1, $2) g))",
        TASK,
        n,
    )


async def _claim(conn: asyncpg.Connection, worker: str, n: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, attempt FROM pgtasks.claim_tasks($1, NULL, $2, $3, $4)",
        worker,
        n,
        LEASE,
        [TASK],
    )


async def _finish(conn: asyncpg.Connection, rows: Sequence[asyncpg.Record]) -> None:
    await conn.fetch(
        "SELECT * FROM pgtasks.finish_tasks($1, $2, $3::jsonb[])",
        [r["id"] for r in rows],
        [r["attempt"] for r in rows],
        [None] * len(rows),
    )


async def captured_plans(conn: asyncpg.Connection, call: Callable[[], Awaitable[Any]]) -> list[str]:
    """Run ``call`` and return the plans of every statement it ran, nested ones included.

    auto_explain with ``log_level = notice`` sends each plan to this client, so we see the
    plan the function really used (PL/pgSQL and SQL functions cache generic plans after five
    calls, which EXPLAIN of the same query text would not show).
    """
    notes: list[str] = []

    def on_notice(_conn: object, message: Any) -> None:
        notes.append(str(message.message))

    conn.add_log_listener(on_notice)
    await conn.execute(
        "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; "
        "SET auto_explain.log_nested_statements = on; SET auto_explain.log_level = notice"
    )
    try:
        await call()
    finally:
        await conn.execute("SET auto_explain.log_min_duration = -1")
        conn.remove_log_listener(on_notice)
    return notes


def plan_shape(plans: Sequence[str], marker: str, node: str = " on tasks ") -> str:
    """The node chain of the first plan whose text has ``marker`` and touches ``node``.

    Costs are dropped. A SQL function's plans all carry the whole function body as their query
    text, so the marker alone cannot tell its statements apart; the node filter does.
    """
    for plan in plans:
        if marker not in plan:
            continue
        nodes: list[str] = []
        for line in plan.splitlines():
            text = line.strip()
            if text.startswith("->") or (not nodes and "(cost=" in text):
                nodes.append(text.removeprefix("->").split("  (cost=")[0].strip())
        if any(node in f" {n} " for n in nodes):
            return " > ".join(nodes)
    return "?"


@contextlib.asynccontextmanager
async def scratch(dsn: str, variant_sql: str | None, name: str) -> AsyncIterator[str]:
    """A fresh database with the shipped schema, then ``variant_sql`` applied on top."""
    async with fresh_database(dsn, f"ablation_{name}") as db:
        await install(db)
        if variant_sql:
            conn = await asyncpg.connect(db)
            try:
                await conn.execute(variant_sql)
            finally:
                await conn.close()
        yield db


#: When the table was last analyzed, relative to the work measured: the plans depend on it.
#: "after_load": stats describe the tasks being claimed (autovacuum caught up);
#: "before_load": stats describe an empty queue (taken just before a burst arrived);
#: "never": a fresh table, as in make bench's fresh databases.
ANALYZE_WHEN = ("after_load", "before_load", "never")

CLAIM_MARKER = "SKIP LOCKED"
FINISH_MARKER = "FROM batch"
HEARTBEAT_MARKER = "lease_expires_at = least(now() + heartbeat.lease"


@dataclasses.dataclass(frozen=True)
class Series:
    """Timings of two functions over one series of batches, and the plans they ended up with."""

    first: Timing
    second: Timing
    first_plan: str
    second_plan: str


async def claim_finish_series(
    db: str, *, ready: int, batches: int, analyze: str, batch: int = BATCH
) -> Series:
    """Claim then finish ``batches`` batches of ``batch`` from a queue of ``ready`` ready tasks.

    The plans are captured on the last batch, after the functions' plan caches had their five
    custom plans and may have switched to a generic one.
    """
    conn = await asyncpg.connect(db)
    try:
        if analyze == "before_load":
            await conn.execute("ANALYZE pgtasks.tasks")
        await _submit(conn, ready)
        if analyze == "after_load":
            await conn.execute("ANALYZE pgtasks.tasks")
        claims: list[float] = []
        finishes: list[float] = []
        for _ in range(batches - 1):
            t0 = time.perf_counter()
            rows = await _claim(conn, "bench-claimer", batch)
            t1 = time.perf_counter()
            await _finish(conn, rows)
            t2 = time.perf_counter()
            if len(rows) != batch:
                raise RuntimeError(f"claimed {len(rows)} tasks, expected {batch}")
            claims.append(t1 - t0)
            finishes.append(t2 - t1)
        last: list[asyncpg.Record] = []

        async def claim_last() -> None:
            last.extend(await _claim(conn, "bench-claimer", batch))

        claim_plans = await captured_plans(conn, claim_last)
        finish_plans = await captured_plans(conn, lambda: _finish(conn, last))
    finally:
        await conn.close()
    n = (batches - 1) * batch
    return Series(
        Timing.of(claims, n),
        Timing.of(finishes, n),
        plan_shape(claim_plans, CLAIM_MARKER),
        plan_shape(finish_plans, FINISH_MARKER),
    )


async def finish_heartbeat_series(db: str, *, running: int, batches: int, analyze: str) -> Series:
    """With ``running`` tasks RUNNING, heartbeat then finish them in batches of 100.

    ``analyze="after_load"`` takes statistics after the submit and before the claims: the
    table as autovacuum last saw it is a queue of PENDING tasks, none RUNNING, the common
    state for a busy queue table.
    """
    conn = await asyncpg.connect(db)
    try:
        if analyze == "before_load":
            await conn.execute("ANALYZE pgtasks.tasks")
        await _submit(conn, running)
        if analyze == "after_load":
            await conn.execute("ANALYZE pgtasks.tasks")
        held: list[asyncpg.Record] = []
        while len(held) < running:  # claimed in chunks: claim_tasks orders its result
            held += await _claim(conn, "bench-holder", min(1000, running - len(held)))

        async def beat(rows: Sequence[asyncpg.Record]) -> None:
            lost = await conn.fetch(
                "SELECT * FROM pgtasks.heartbeat($1, $2, $3, $4)",
                "bench-holder",
                [r["id"] for r in rows],
                [r["attempt"] for r in rows],
                LEASE,
            )
            if lost:
                raise RuntimeError(f"heartbeat lost {len(lost)} tasks")

        beats: list[float] = []
        finishes: list[float] = []
        for i in range(batches - 1):
            rows = held[i * BATCH : (i + 1) * BATCH]
            t0 = time.perf_counter()
            await beat(rows)
            t1 = time.perf_counter()
            await _finish(conn, rows)
            t2 = time.perf_counter()
            beats.append(t1 - t0)
            finishes.append(t2 - t1)
        last = held[(batches - 1) * BATCH : batches * BATCH]
        beat_plans = await captured_plans(conn, lambda: beat(last))
        finish_plans = await captured_plans(conn, lambda: _finish(conn, last))
    finally:
        await conn.close()
    n = (batches - 1) * BATCH
    return Series(
        Timing.of(beats, n),
        Timing.of(finishes, n),
        plan_shape(beat_plans, HEARTBEAT_MARKER),
        plan_shape(finish_plans, FINISH_MARKER),
    )


# --------------------------------------------------------------------------- experiments


Row = dict[str, Any]


def _median_timing(samples: Sequence[Timing]) -> Row:
    return {
        "us_per_task": round(statistics.median(t.us_per_task for t in samples), 1),
        "us_per_call": round(statistics.median(t.us_per_call for t in samples), 1),
        "runs": len(samples),
        "samples_us_per_task": [round(t.us_per_task, 1) for t in samples],
    }


Variant = tuple[str, str | None, str]  # label, SQL applied on top of the schema, analyze when
SeriesFn = Callable[[str], Awaitable[Series]]


async def _run_variants(
    experiment: str,
    dsn: str,
    runs: int,
    variants: Sequence[Variant],
    series: Callable[[str, str], Awaitable[Series]],
    functions: tuple[str, str],
) -> list[Row]:
    out: list[Row] = []
    for label, sql, analyze in variants:
        results: list[Series] = []
        for _ in range(runs):
            async with scratch(dsn, sql, experiment.split(",")[0].replace(" ", "_")) as db:
                results.append(await series(db, analyze))
        for name, timings, plan in (
            (functions[0], [r.first for r in results], results[-1].first_plan),
            (functions[1], [r.second for r in results], results[-1].second_plan),
        ):
            out.append(
                {
                    "experiment": experiment,
                    "variant": label,
                    "analyzed": analyze,
                    "function": name,
                    **_median_timing(timings),
                    "plan": plan,
                }
            )
            _log(
                f"{experiment}: {label} [{analyze}]: {name} {out[-1]['us_per_task']:,.1f} us/task"
                f" ({out[-1]['us_per_call']:,.0f} us/call): {plan}"
            )
    return out


async def claim_experiment(dsn: str, runs: int) -> list[Row]:
    """Claim order: an index walk against a sort of every ready row, 20,000 ready."""
    variants: list[Variant] = [
        ("shipped: partial index in claim order", None, "after_load"),
        ("before: no index matching ORDER BY", CLAIM_WITHOUT_ORDER_INDEX, "after_load"),
        ("shipped", None, "never"),
        ("shipped", None, "before_load"),
    ]

    async def series(db: str, analyze: str) -> Series:
        return await claim_finish_series(db, ready=20_000, batches=20, analyze=analyze)

    return await _run_variants(
        "claim, 20k ready", dsn, runs, variants, series, ("claim_tasks", "finish_tasks")
    )


async def fresh_table_experiment(dsn: str, runs: int) -> list[Row]:
    """make bench's drain shape at SQL level: 3,000 ready, batches of 10, stats or none.

    A table that was never analyzed (every fresh database of make bench) or analyzed while the
    queue was empty is planned from guesses; this shows what the claim and finish cost then.
    """
    variants: list[Variant] = [
        ("shipped, 3k ready, batches of 10", None, "after_load"),
        ("shipped, 3k ready, batches of 10", None, "never"),
        ("shipped, 3k ready, batches of 10", None, "before_load"),
    ]

    async def series(db: str, analyze: str) -> Series:
        return await claim_finish_series(db, ready=3_000, batches=300, analyze=analyze, batch=10)

    return await _run_variants(
        "claim, 3k ready, batch 10", dsn, runs, variants, series, ("claim_tasks", "finish_tasks")
    )


async def lease_experiment(dsn: str, runs: int) -> list[Row]:
    """Lease index predicate, with 20,000 RUNNING tasks: heartbeat and finish 100 at a time."""
    variants: list[Variant] = [
        ("shipped: lease index WHERE lease_expires_at IS NOT NULL", None, "after_load"),
        ("before: lease index WHERE status = 'RUNNING'", LEASE_INDEX_ON_STATUS, "after_load"),
        ("shipped", None, "never"),
    ]

    async def series(db: str, analyze: str) -> Series:
        return await finish_heartbeat_series(db, running=20_000, batches=20, analyze=analyze)

    return await _run_variants(
        "finish/heartbeat, 20k running", dsn, runs, variants, series, ("heartbeat", "finish_tasks")
    )


async def trigger_experiment(dsn: str, runs: int) -> list[Row]:
    """Transition rule and history: WHEN clause + per-statement INSERT vs a per-row trigger."""
    variants: list[Variant] = [
        ("shipped: WHEN-clause check + per-statement history", None, "after_load"),
        ("before: per-row PL/pgSQL check + history row", PER_ROW_TRANSITION_TRIGGER, "after_load"),
        ("shipped + foreign key task_events -> tasks", HISTORY_FOREIGN_KEY, "after_load"),
    ]

    async def series(db: str, analyze: str) -> Series:
        return await claim_finish_series(db, ready=2_000, batches=20, analyze=analyze)

    return await _run_variants(
        "transition trigger, 2k ready", dsn, runs, variants, series, ("claim_tasks", "finish_tasks")
    )


def _listening_install(
    sql: str | None, listeners: list[asyncpg.Connection]
) -> Callable[[str], Awaitable[None]]:
    async def install_variant(db: str) -> None:
        await install(db)
        conn = await asyncpg.connect(db)
        try:
            if sql:
                await conn.execute(sql)
        finally:
            await conn.close()
        # One idle worker's LISTEN connection, so notifications have someone to go to.
        listener = await asyncpg.connect(db)
        await listener.add_listener("pgtasks_wakeup", lambda *_: None)
        listeners.append(listener)

    return install_variant


async def notify_experiment(dsn: str, runs: int) -> list[Row]:
    """Single-row submits from 10 clients under each wake-up design (make bench's scenario)."""
    cfg = BenchConfig.from_env()
    variants: list[tuple[str, str | None]] = [
        ("wake-ups off (pgtasks.wake_workers = off)", NOTIFY_OFF),
        ("shipped: in record_inserts, skipped when the queue head is already ready", None),
        ("before 0008: a trigger of its own, grouped head check", notify_before_0008()),
        ("per statement, always", NOTIFY_PER_STATEMENT_ALWAYS),
        ("before: one NOTIFY per row", NOTIFY_PER_ROW),
    ]
    samples: dict[str, list[float]] = {label: [] for label, _ in variants}
    for _ in range(runs):
        for label, sql in variants:  # interleaved, so machine noise hits every variant alike
            listeners: list[asyncpg.Connection] = []
            try:
                peer = make_peer(install_fn=_listening_install(sql, listeners))
                samples[label].append(await sample_enqueue_single(peer, dsn, cfg))
            finally:
                for conn in listeners:
                    with contextlib.suppress(Exception):
                        await conn.close()
    off = statistics.median(samples[variants[0][0]])
    out: list[Row] = []
    for label, values in samples.items():
        med = statistics.median(values)
        out.append(
            {
                "experiment": "enqueue_single, 10 clients, 1 listener",
                "variant": label,
                "jobs_per_s": round(med),
                "vs_off": round(med / off, 2),
                "samples": [round(v) for v in values],
            }
        )
        _log(f"notify: {label}: {med:,.0f} jobs/s ({med / off:.2f} of off)")
    return out


async def submit_loop_experiment(dsn: str, runs: int) -> list[Row]:
    """Server CPU of one single-row submit_task under each wake-up design, without the
    network or the commit: 2,000 submits in a server-side loop, one fresh database per
    design, designs interleaved; min and median of ``runs`` loops (min: the least disturbed
    by the shared machine)."""
    loop = (
        "DO $$ BEGIN FOR i IN 1..2000 LOOP PERFORM pgtasks.submit_task(task_type => 't');"
        " END LOOP; END $$"
    )
    variants: list[tuple[str, str | None]] = [
        ("wake-ups off", "SET pgtasks.wake_workers = off"),
        ("shipped (0008; 0015 kept it)", None),
        ("before 0008", notify_before_0008()),
    ]
    samples: dict[str, list[float]] = {label: [] for label, _ in variants}
    async with contextlib.AsyncExitStack() as stack:
        conns: dict[str, asyncpg.Connection] = {}
        for label, sql in variants:
            db = await stack.enter_async_context(scratch(dsn, None, "submit_loop"))
            conn = await asyncpg.connect(db)
            stack.push_async_callback(conn.close)
            if sql:
                await conn.execute(sql)
            await conn.execute(loop)  # warm: plans cached, the queue head exists
            conns[label] = conn
        for r in range(max(runs, 5)):
            order = list(conns) if r % 2 == 0 else list(reversed(conns))
            for label in order:
                started = time.perf_counter()
                await conns[label].execute(loop)
                samples[label].append((time.perf_counter() - started) / 2000 * 1e6)
    out: list[Row] = []
    for label, values in samples.items():
        out.append(
            {
                "experiment": "submit_task x 2,000 in a server-side loop",
                "variant": label,
                "us_per_submit_min": round(min(values), 1),
                "us_per_submit_median": round(statistics.median(values), 1),
                "samples": [round(v, 1) for v in values],
            }
        )
        _log(
            f"submit loop: {label}: min {min(values):.1f} us, "
            f"median {statistics.median(values):.1f} us"
        )
    return out


async def batch_experiment(dsn: str, runs: int) -> list[Row]:
    """Drain (make bench's scenario) by claim batch size, PgQueuer's at 100 too.

    pgtasks claims up to its free slots, so its batch size is its concurrency; PgQueuer's is
    ``batch_size``. Comparing at equal batch sizes separates "bigger batches" from "cheaper
    per batch".
    """
    from bench import peer_pgqueuer

    cfg = BenchConfig.from_env()
    configs: list[tuple[str, Peer]] = []
    for size in (10, 100):
        configs.append((f"pgtasks, concurrency {size}", make_peer(concurrency=size)))
        configs.append(
            (
                f"pgqueuer, batch_size {size}",
                Peer(
                    name="pgqueuer",
                    install=peer_pgqueuer.install,
                    connect=peer_pgqueuer.PgQueuerClient.connect,
                    worker_module="bench.peer_pgqueuer",
                    worker_args=("--batch-size", str(size)),
                ),
            )
        )
    out: list[Row] = []
    for workers in (1, 2):
        samples: dict[str, list[float]] = {label: [] for label, _ in configs}
        for _ in range(runs):
            for label, peer in configs:  # interleaved, so machine noise hits all alike
                samples[label].append(await sample_drain(peer, dsn, cfg, workers))
        for label, values in samples.items():
            med = statistics.median(values)
            out.append(
                {
                    "experiment": f"drain_{workers}, {cfg.drain_jobs:,} jobs",
                    "variant": label,
                    "jobs_per_s": round(med),
                    "min": round(min(values)),
                    "max": round(max(values)),
                    "samples": [round(v) for v in values],
                }
            )
            _log(f"batch: drain_{workers} {label}: {med:,.0f} jobs/s")
    return out


EXPERIMENTS: dict[str, Callable[[str, int], Awaitable[list[Row]]]] = {
    "claim": claim_experiment,
    "fresh": fresh_table_experiment,
    "lease": lease_experiment,
    "trigger": trigger_experiment,
    "notify": notify_experiment,
    "submit_loop": submit_loop_experiment,
    "batch": batch_experiment,
}


async def run_experiments(dsn: str, runs: int, names: Sequence[str]) -> dict[str, list[Row]]:
    return {name: await EXPERIMENTS[name](dsn, runs) for name in names}


def format_rows(results: dict[str, list[Row]]) -> str:
    lines: list[str] = []
    for rows in results.values():
        for r in rows:
            if "us_per_task" in r:
                lines.append(
                    f"{r['experiment']:<34} {r['function']:<13} {r['us_per_task']:>9,.1f} us/task "
                    f"{r['us_per_call']:>10,.0f} us/call   {r['variant']} [analyzed: "
                    f"{r['analyzed']}]\n{'':<48}plan: {r['plan']}"
                )
            elif "us_per_submit_min" in r:
                lines.append(
                    f"{r['experiment']:<34} min {r['us_per_submit_min']:>6.1f} us, median "
                    f"{r['us_per_submit_median']:>6.1f} us per submit   {r['variant']}"
                )
            elif "vs_off" in r:
                lines.append(
                    f"{r['experiment']:<34} {'submit_task':<13} {r['jobs_per_s']:>9,} jobs/s "
                    f"{r['vs_off']:>10.2f} x off    {r['variant']}"
                )
            else:
                lines.append(
                    f"{r['experiment']:<34} {r['jobs_per_s']:>9,} jobs/s "
                    f"[{r['min']:,}-{r['max']:,}]   {r['variant']}"
                )
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ablations")
    parser.add_argument("--dsn", help="an existing server (default: a private embedded one)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default=",".join(EXPERIMENTS), help="comma-separated subset")
    parser.add_argument(
        "--json",
        type=Path,
        help="where to write the rows (default: bench/results/ablations-<timestamp>.json)",
    )
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        parser.error(f"unknown experiment(s) {unknown}; choose from {', '.join(EXPERIMENTS)}")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    load_before = machine_load()
    with benchmark_server(args.dsn) as dsn:
        results = asyncio.run(run_experiments(dsn, args.runs, names))
    print(format_rows(results))
    out = args.json or REPO_ROOT / "bench" / "results" / f"ablations-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "timestamp": stamp,
        "runs": args.runs,
        "code": provenance(),
        "load_before": load_before,
        "load_after": machine_load(),
        "experiments": results,
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")
    _log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
