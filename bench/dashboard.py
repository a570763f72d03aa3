"""`python -m bench.dashboard`: the dashboard's server time with 1,000,000 tasks in the table.

Loads a million tasks (set-based, through the state machine's triggers, as bench/
peer_pgtasks.load_history does: submit_tasks, then PENDING -> RUNNING -> DONE/FAILED by id
range, VACUUM after each chunk), starts `pgtasks serve` against them, and times every
page and call the dashboard makes with httpx on the same machine: two warm-ups, then the
median and the slowest of `--runs`. Prints a Markdown table and writes the figures to
bench/results/dashboard-<timestamp>.json.

    python -m bench.dashboard [--tasks N] [--runs N] [--dsn URL] [--reuse]

`--dsn` uses a running server instead of a private embedded one; `--reuse` keeps the
database `pgtasks_dashboard` from an earlier run with `--dsn` when it holds the tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx

from bench.common import REPO_ROOT, dsn_with_database
from bench.server import benchmark_server
from pgtasks.migrations import migrate_url

DATABASE = "pgtasks_dashboard"
CHUNK = 50_000
TYPES = ["report", "email", "resize", "sync", "webhook"]
QUEUES = ["default", "mail", "media", "hooks"]
ERRORS = [
    "TimeoutError: upstream took longer than 30 s",
    "ValueError: invalid image header",
    "ConnectionResetError: peer closed the connection",
]

# Spread over the last week, so the 5-minute throughput window holds a realistic few.
_FINISHED_AT = "now() - ((id * 7919) % 604800) * interval '1 second'"
_SUBMIT = """
SELECT min(id), max(id) FROM pgtasks.submit_tasks(
    task_type => $1, queue => $2,
    params_list => ARRAY(SELECT jsonb_build_object('seq', g) FROM generate_series(1, $3) g)
) AS t(id)
"""
_CANCEL = f"""
UPDATE pgtasks.tasks SET status = 'CANCELLED', finished_at = {_FINISHED_AT}
 WHERE id BETWEEN $1 AND $2 AND id % 200 = 1
"""
_CLAIM = """
UPDATE pgtasks.tasks
   SET status = 'RUNNING', worker_id = 'bench-dashboard-loader', attempt = 1,
       started_at = now(), deadline = now() + timeout,
       lease_expires_at = least(now() + interval '1 hour', now() + timeout)
 WHERE id BETWEEN $1 AND $2 AND status = 'PENDING'
"""
_FINISH = f"""
UPDATE pgtasks.tasks
   SET status = CASE WHEN id % 50 = 0 THEN 'FAILED' ELSE 'DONE' END::pgtasks.status,
       error = CASE WHEN id % 50 = 0 THEN ($3::text[])[1 + id % 3] END,
       finished_at = {_FINISHED_AT}, worker_id = NULL, lease_expires_at = NULL,
       deadline = NULL
 WHERE id BETWEEN $1 AND $2 AND status = 'RUNNING'
"""


# A week-old workflow still waiting: one parent scheduled a day ahead, and its children,
# WAITING among the oldest ids (the worst case for a status filter walking newest first).
_WAITING = """
WITH parent AS (
    SELECT pgtasks.submit_task(task_type => 'report', queue => 'default',
                               run_at => now() + interval '1 day') AS id
)
SELECT count(pgtasks.submit_task(task_type => 'sync', queue => 'hooks',
                                 depends_on => ARRAY[parent.id]))
  FROM parent, generate_series(1, $1)
"""
WAITING = 500


async def load(dsn: str, tasks: int) -> None:
    """`tasks` tasks: 100 of a rare type first and 500 WAITING on a scheduled parent (the
    oldest ids: the worst case for a type or status filter walking newest first), then
    chunks of five types in four queues, 2 % FAILED, 0.5 % CANCELLED, the rest DONE; then
    5,000 ready and 1,000 scheduled tasks."""
    conn = await asyncpg.connect(dsn)
    try:
        plan = [("audit", "default", 100)]
        left, i = tasks - 100 - WAITING - 1 - 6000, 0
        while left > 0:
            n = min(CHUNK, left)
            plan.append((TYPES[i % len(TYPES)], QUEUES[i % len(QUEUES)], n))
            left -= n
            i += 1
        done = 0
        for task_type, queue, n in plan:
            async with conn.transaction():
                lo, hi = await conn.fetchrow(_SUBMIT, task_type, queue, n)
                await conn.execute(_CANCEL, lo, hi)
                await conn.execute(_CLAIM, lo, hi)
                await conn.execute(_FINISH, lo, hi, ERRORS)
            if not done:  # right after the rare type
                assert await conn.fetchval(_WAITING, WAITING) == WAITING
            await conn.execute("VACUUM pgtasks.tasks")
            done += n
            print(f"loaded {done:,} finished tasks", file=sys.stderr, flush=True)
        await conn.fetchrow(_SUBMIT, "report", "default", 5000)
        await conn.execute(
            "SELECT count(*) FROM pgtasks.submit_tasks(task_type => 'email', queue => 'mail', "
            "params_list => ARRAY(SELECT '{}'::jsonb FROM generate_series(1, 1000)), "
            "run_at => now() + interval '1 day')"
        )
        await conn.execute("VACUUM ANALYZE pgtasks.tasks")
        await conn.execute("VACUUM ANALYZE pgtasks.task_events")
    finally:
        await conn.close()


async def prepare(dsn: str, tasks: int, reuse: bool) -> str:
    admin = await asyncpg.connect(dsn)
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
        if exists and not reuse:
            await admin.execute(f'DROP DATABASE "{DATABASE}" WITH (FORCE)')
        if not exists or not reuse:
            await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await admin.close()
    url = dsn_with_database(dsn, DATABASE)
    await migrate_url(url)
    conn = await asyncpg.connect(url)
    try:
        have = await conn.fetchval("SELECT count(*) FROM pgtasks.tasks")
        await conn.execute("ANALYZE pgtasks.tasks")
    finally:
        await conn.close()
    if have < tasks:
        if have:
            raise SystemExit(f"{DATABASE} holds {have} tasks; run without --reuse")
        await load(url, tasks)
    return url


def calls(sample_id: int) -> list[tuple[str, str]]:
    """(what, path): every page and call the dashboard makes, with the filters it offers."""
    return [
        ("overview page", "/"),
        ("overview stream, first frame", "/stream/overview"),
        ("tasks, newest", "/tasks"),
        ("tasks, deep keyset page", "/tasks?after=500000"),
        ("tasks, status FAILED", "/tasks?status=FAILED"),
        ("tasks, status CANCELLED", "/tasks?status=CANCELLED"),
        ("tasks, status PENDING", "/tasks?status=PENDING"),
        ("tasks, status RUNNING (none)", "/tasks?status=RUNNING"),
        ("tasks, status WAITING (500, oldest)", "/tasks?status=WAITING"),
        ("tasks, queue", "/tasks?queue=media"),
        ("tasks, rare type (100, oldest)", "/tasks?task_type=audit"),
        ("tasks, type + status FAILED", "/tasks?task_type=email&status=FAILED"),
        ("tasks, oldest ready first", "/tasks?order=ready"),
        ("tasks, text search", "/tasks?q=invalid+image"),
        ("tasks, text search, no match", "/tasks?q=no+such+text"),
        ("task detail", f"/tasks/{sample_id}"),
        ("failed (groups + list)", "/failed"),
        ("failed, one type", "/failed?task_type=resize"),
        ("queues", "/queues"),
        ("schedules", "/schedules"),
        ("workflows", "/workflows"),
        ("API: bulk retry, 20 ids", "POST /api/tasks/retry"),
        # Not the dashboard's: for comparison, both read pgtasks.queue_stats, which counts
        # every row of the table by status.
        ("(API GET /queues, not used)", "/api/queues"),
        ("(/metrics, not used)", "/metrics"),
    ]


def time_call(http: httpx.Client, path: str, failed_ids: list[int]) -> float:
    start = time.perf_counter()
    if path.startswith("POST "):
        ids, failed_ids[:] = failed_ids[:20], failed_ids[20:]
        r = http.post(path[5:], json={"ids": ids})
        r.raise_for_status()
    elif path.startswith("/stream/"):
        with http.stream("GET", path) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    break
    else:
        r = http.get(path)
        r.raise_for_status()
    return (time.perf_counter() - start) * 1000


def measure(url: str, runs: int) -> list[dict[str, object]]:
    port = 18000 + os.getpid() % 1000
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgtasks.cli", "--database-url", url, "serve", "--port",
         str(port), "--log-level", "warning"],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    out = []
    try:
        with httpx.Client(base_url=base, timeout=60) as http:
            for _ in range(300):
                try:
                    http.get("/api/workers")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            failed = asyncio.run(_failed_ids(url, 20 * (runs + 2)))
            sample = failed[0]
            for what, path in calls(sample):
                for _ in range(2):
                    time_call(http, path, failed)
                times = [time_call(http, path, failed) for _ in range(runs)]
                out.append({"call": what, "path": path, "median_ms": statistics.median(times),
                            "max_ms": max(times)})  # fmt: skip
                print(f"{what}: {statistics.median(times):.1f} ms", file=sys.stderr)
    finally:
        proc.terminate()
        proc.wait(30)
    return out


async def _failed_ids(url: str, n: int) -> list[int]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT id FROM pgtasks.failed_tasks ORDER BY id DESC LIMIT $1", n)
    finally:
        await conn.close()
    return [r["id"] for r in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=9)
    p.add_argument("--dsn", default=None)
    p.add_argument("--reuse", action="store_true")
    args = p.parse_args()
    with benchmark_server(args.dsn) as dsn:
        started = time.perf_counter()
        url = asyncio.run(prepare(dsn, args.tasks, args.reuse))
        print(f"table ready in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        rows = measure(url, args.runs)
    print(f"\n{args.tasks:,} tasks; median and slowest of {args.runs} requests, ms\n")
    print("| page or call | median | slowest |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r['call']} (`{r['path']}`) | {r['median_ms']:.1f} | {r['max_ms']:.1f} |")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    out = Path(REPO_ROOT) / "bench" / "results" / f"dashboard-{stamp}.json"
    out.write_text(json.dumps({"tasks": args.tasks, "runs": args.runs, "calls": rows}, indent=2))
    print(f"\nwritten to {out.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
