"""Chaos: 2,000 tasks, 4 worker processes, SIGKILLs and a PostgreSQL restart mid-run.

At-least-once is the promise: every task ends DONE with the right result, none is left
RUNNING, and the number that ran more than once is small and explained. Each kill can cut
short at most what that worker held: its running tasks (the concurrency) plus results not
yet written (one completion batch). A server restart can cost at most the same for every
worker alive at the time, if it outlasts the lease. The test prints the figures.

Kills happen at progress milestones, not on a clock, so the number of kills does not
depend on how fast the machine is. `make test` runs 2,000 tasks (12 kills and the restart
all land); PGTASKS_LONG=1 runs 20,000 and PGTASKS_CHAOS_TASKS sets any number
(`PGTASKS_LONG=1 .venv/bin/python -m pytest tests/test_chaos.py -s` prints the figures).
"""

from __future__ import annotations

import asyncio
import random

import asyncpg
import pytest

from pgtasks import Client
from tests.conftest import knob
from tests.fleet import Fleet, fresh_conn, start_private_server

TASKS = knob("PGTASKS_CHAOS_TASKS", 2000, 20000)
WORKERS = 4
CONCURRENCY = 10
LEASE = 3
KILL_AT = [i / 100 for i in range(6, 95, 8)]  # 12 kills, from 6 % to 94 % done
RESTART_AT = 0.5


@pytest.mark.slow
async def test_chaos_kills_and_a_restart_lose_nothing(tmp_path):
    rng = random.Random(20240607)
    server, url = await start_private_server(tmp_path / "pg")
    fleet = Fleet(url, tmp_path / "logs")
    args = ["--lease", str(LEASE), "--concurrency", str(CONCURRENCY), "--poll-interval", "0.5"]
    kills = restarts = 0
    killed: set[int] = set()
    try:
        async with Client(url) as client:
            for start in range(0, TASKS, 1000):
                await client.submit_many(
                    "chaos",
                    [
                        {"n": n, "lo": 0.05, "hi": 0.35}
                        for n in range(start, min(start + 1000, TASKS))
                    ],
                )
        for _ in range(WORKERS):
            fleet.start(*args)

        milestones = list(KILL_AT)
        restart_pending = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 600  # only bounds a hung run
        while True:
            try:
                async with fresh_conn(url, timeout=30) as conn:
                    done = await conn.fetchval(
                        "SELECT count(*) FROM pgtasks.tasks WHERE status = 'DONE'"
                    )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                continue
            if done == TASKS:
                break
            assert loop.time() < deadline, f"stuck at {done} done\n{fleet.tails()}"
            progress = done / TASKS
            if restart_pending and progress >= RESTART_AT:
                restart_pending = False
                await asyncio.to_thread(server.restart)
                restarts += 1
            elif milestones and progress >= milestones[0]:
                milestones.pop(0)
                victim = rng.choice(fleet.alive())
                fleet.kill(victim)
                killed.add(victim.pid)
                kills += 1
                fleet.start(*args)
            await asyncio.sleep(0.2)
        assert not milestones and not restart_pending

        async with fresh_conn(url) as conn:
            by_status = dict(
                await conn.fetch("SELECT status::text, count(*) FROM pgtasks.tasks GROUP BY 1")
            )
            assert by_status == {"DONE": TASKS}  # none RUNNING, FAILED, or waiting
            wrong = await conn.fetchval(
                "SELECT count(*) FROM pgtasks.tasks"
                " WHERE result <> to_jsonb((params->>'n')::int * 2)"
            )
            assert wrong == 0
            never_ran = await conn.fetchval(
                "SELECT count(*) FROM pgtasks.tasks t"
                " WHERE NOT EXISTS (SELECT 1 FROM test_runs r WHERE r.task_id = t.id)"
            )
            assert never_ran == 0
            reruns = await conn.fetchval(
                "SELECT count(*) FROM (SELECT task_id FROM test_runs GROUP BY task_id"
                " HAVING count(*) > 1) x"
            )
            extra_runs = await conn.fetchval("SELECT count(*) FROM test_runs") - TASKS
            reclaimed = await conn.fetchval("SELECT count(*) FROM pgtasks.tasks WHERE attempt > 1")
            rescued = await conn.fetchval(
                "SELECT count(*) FROM pgtasks.task_errors WHERE error LIKE 'lease expired%'"
            )
            other_errors = await conn.fetch(
                "SELECT error, count(*) FROM pgtasks.task_errors"
                " WHERE error NOT LIKE 'lease expired%' GROUP BY 1 ORDER BY 2 DESC LIMIT 5"
            )
            registered = await conn.fetch("SELECT pid, alive FROM pgtasks.workers")
        workers_seen = len(registered)
        dead = {r["pid"] for r in registered if not r["alive"]}
        bound = 2 * CONCURRENCY * (kills + restarts * WORKERS)
        print(
            f"\nchaos: {TASKS} tasks, {WORKERS} workers x {CONCURRENCY} slots, {kills} kill -9,"
            f" {restarts} server restart; {reruns} tasks ran more than once"
            f" ({extra_runs} extra runs), {reclaimed} claimed more than once,"
            f" {rescued} lease rescues; other failed attempts: {[tuple(e) for e in other_errors]};"
            f" {workers_seen} workers registered, {len(dead)} dead; bound {bound}"
        )
        assert reruns <= bound
        assert kills == len(KILL_AT) and restarts == 1
        # No worker died of the restart: only the killed ones are gone, and only they show
        # as dead in pgtasks.workers.
        assert len(fleet.alive()) == WORKERS, fleet.tails()
        # (A worker killed while still starting up never registered, so it is not listed.)
        assert dead == {r["pid"] for r in registered if r["pid"] in killed}
    finally:
        fleet.stop_all()
        await asyncio.to_thread(server.destroy)
