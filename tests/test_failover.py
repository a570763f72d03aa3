"""A real failover: Patroni, etcd and two PostgreSQL members with synchronous replication.

During a drain, with producers submitting, the primary's postmaster is killed with kill -9;
Patroni promotes the synchronous standby; later a planned switchover moves the primary back.
Workers and producers use one multi-host URL with target_session_attrs=read-write
(tests/patroni_cluster.py) and find the new primary by themselves. Then:

* every task acknowledged to a producer exists, exactly once, and ends DONE; none is stuck;
* no task whose code had returned runs again (the final flush, the checkpoint and the finish
  are retried through the failover while the lease holds): only attempts whose code was
  running at the kill or the switchover run again, which is at-least-once;
* no task waits out a lease because its claim's answer was lost (the worker reconciles);
* a worker cut off by the failover, whose lease ran out meanwhile, writes nothing when it
  comes back: its checkpoint, progress, log lines and result are all refused (fencing).

The test prints the time from the kill to the first claim on the new primary, and from the
switchover request to the first claim after it. `make test` drains 1,200 tasks;
PGTASKS_FAILOVER_TASKS sets the count, and PGTASKS_LONG=1 drains 20,000 (see
docs/high-availability.md for the figures and CONTRIBUTING.md for the long runs).
Skipped, with the reason, when Patroni or etcd is not installed (.ci/run installs both).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter, defaultdict
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from pgtasks import Client
from pgtasks.db import TRANSIENT
from pgtasks.migrations import migrate_url
from tests.apps.failover import EFFECTS_DDL
from tests.conftest import knob, until
from tests.fleet import Fleet, fresh_conn, psql
from tests.patroni_cluster import Cluster, missing

TASKS = knob("PGTASKS_FAILOVER_TASKS", 1200, 20000)
WORKERS = 2
CONCURRENCY = 20
# Longer than a failover's outage (the keeper heartbeats every third of it), so the leases
# of tasks that go on running hold through it.
LEASE = 15
APP = "tests/apps/failover.py"
# Half the tasks are queued before the workers start; producers submit a quarter at the
# kill and the last quarter just before the switchover (which comes as soon as the old
# primary is back as the synchronous standby), so tasks are running and submits are in
# flight through both, and the drain cannot end before the switchover.
KILL_AT = 0.2  # of TASKS done
ZOMBIES = 3  # tasks claimed by a worker the failover cuts off
ZOMBIE_LEASE = timedelta(seconds=2)
SLEEP = {"lo": 0.02, "hi": 0.12}  # each attempt's own work, seconds

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(missing() is not None, reason=f"no Patroni cluster here: {missing()}"),
]


async def produce(
    client: Client, items: asyncio.Queue[int], acked: dict[int, int], resent: list[int]
) -> None:
    """Submit each n with its idempotency key, again after any connection error, until one
    submit is acknowledged; record the id it returned (and in `resent`, each n sent again)."""
    while True:
        n = await items.get()
        first = True
        while True:
            if not first:
                resent.append(n)
            first = False
            try:
                made = await client.submit(
                    "ha", {"n": n, **SLEEP}, idempotency_key=f"ha-{n}",
                    unique_for=timedelta(hours=1), max_retries=20,
                )  # fmt: skip
            except TRANSIENT:
                await asyncio.sleep(0.05)
                continue
            acked[n] = int(made)
            break
        items.task_done()


async def count_done(url: str) -> int | None:
    with contextlib.suppress(*TRANSIENT):
        async with fresh_conn(url, timeout=5) as conn:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM pgtasks.tasks WHERE task_type = 'ha' AND status = 'DONE'"
                )
            )
    return None


async def count_running(url: str) -> int:
    async with fresh_conn(url) as conn:
        return int(
            await conn.fetchval("SELECT count(*) FROM pgtasks.tasks WHERE status = 'RUNNING'")
        )


async def first_claim_after(url: str, at: float) -> float:
    """Seconds from `at` (time.time()) to the first claim committed after it. After a kill
    of the primary, every later commit is the new primary's."""
    async with fresh_conn(url) as conn:
        first = await conn.fetchval(
            "SELECT min(at) FROM pgtasks.task_events"
            " WHERE to_status = 'RUNNING' AND at > to_timestamp($1)",
            at,
        )
    assert first is not None
    return float(first.timestamp() - at)


async def longest_claim_pause(url: str, start: float, end: float) -> float:
    """The longest gap between two claims from `start` to the first claim after `end`
    (time.time()): how long a switchover stopped the queue. The old primary claims until
    Patroni shuts it down, so the first claim after the request is not the measure."""
    async with fresh_conn(url) as conn:
        gap = await conn.fetchval(
            "SELECT extract(epoch FROM max(at - prev)) FROM ("
            "  SELECT at, lag(at) OVER (ORDER BY at) AS prev FROM pgtasks.task_events"
            "  WHERE to_status = 'RUNNING' AND at >= to_timestamp($1) - interval '1 second'"
            "    AND at <= (SELECT min(at) FROM pgtasks.task_events"
            "               WHERE to_status = 'RUNNING' AND at > to_timestamp($2))) x",
            start,
            end,
        )
    assert gap is not None
    return float(gap)


def read_journals(folder: Path) -> dict[str, dict[int, list[int]]]:
    """{event: {task id: the attempts in which the task's code reached it}}, for the events
    start, step (the checkpointed step's code ran) and return."""
    seen: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for path in folder.iterdir():
        for line in path.read_text().splitlines():
            event, task_id, attempt = line.split()
            seen[event][int(task_id)].append(int(attempt))
    return seen


async def test_failover_and_switchover_lose_nothing(tmp_path, monkeypatch):
    journal = tmp_path / "journal"
    journal.mkdir()
    monkeypatch.setenv("PGTASKS_HA_JOURNAL", str(journal))
    cluster = Cluster(tmp_path / "ha")
    fleet: Fleet | None = None
    producers: list[asyncio.Task[None]] = []
    keeper: asyncio.Task[None] | None = None
    try:
        await asyncio.to_thread(cluster.start)
        url = cluster.url()
        await migrate_url(url)
        setup = await psql(url)
        try:
            await setup.execute(EFFECTS_DDL)
            # The worker the failover cuts off: it claims before the fleet starts and
            # heartbeats on one connection until that connection dies with the primary.
            await setup.execute(
                "SELECT pgtasks.register_worker(worker_id => 'cut-off', host => 'test', pid => 0)"
            )
        finally:
            await setup.close()

        acked: dict[int, int] = {}
        items: asyncio.Queue[int] = asyncio.Queue()
        async with Client(url) as client:
            first_half = TASKS // 2
            ids = await client.submit_many(
                "ha", [{"n": n, **SLEEP} for n in range(first_half)],
                unique_keys=[f"ha-{n}" for n in range(first_half)],
                unique_for=timedelta(hours=1), max_retries=20,
            )  # fmt: skip
            acked.update(zip(range(first_half), ids, strict=True))

            cut_off = await psql(url)
            zombies = await cut_off.fetch(
                "SELECT id, lease_token FROM pgtasks.claim_tasks(worker_id => 'cut-off',"
                " queues => NULL, max_tasks => $1, lease => $2)",
                ZOMBIES,
                ZOMBIE_LEASE,
            )
            assert len(zombies) == ZOMBIES
            zombie_ids = [r["id"] for r in zombies]
            zombie_tokens = [r["lease_token"] for r in zombies]

            async def keep_zombies() -> None:
                with contextlib.suppress(*TRANSIENT, asyncpg.PostgresError):
                    while True:
                        lost = await cut_off.fetch(
                            "SELECT * FROM pgtasks.heartbeat(worker_id => 'cut-off',"
                            " task_ids => $1, lease_tokens => $2, lease => $3)",
                            zombie_ids, zombie_tokens, ZOMBIE_LEASE,
                        )  # fmt: skip
                        if lost:  # a stall outlasted its lease: it is cut off already
                            return
                        await asyncio.sleep(0.3)

            keeper = asyncio.create_task(keep_zombies())

            fleet = Fleet(url, tmp_path / "logs")
            args = ["--lease", str(LEASE), "--concurrency", str(CONCURRENCY),
                    "--poll-interval", "0.5"]  # fmt: skip
            for _ in range(WORKERS):
                fleet.start(*args, app=APP)
            resent: list[int] = []
            producers = [
                asyncio.create_task(produce(client, items, acked, resent)) for _ in range(4)
            ]

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 900  # only bounds a hung run
            began = time.time()
            killed_at = switched_at = switched_by = None
            old_primary = cluster.member("pg1")
            new_primary = cluster.other(old_primary)
            running_at_kill = running_at_switchover = 0
            rejoined_after = promoted_after = 0.0
            promoted: asyncio.Task[float] | None = None
            third_quarter = range(first_half, first_half + TASKS // 4)
            last_quarter = range(first_half + TASKS // 4, TASKS)
            while True:
                done = await count_done(url)
                assert loop.time() < deadline, (
                    f"stuck at {done} done\n{fleet.tails()}\n{cluster.tails()}"
                )
                if done is None:
                    await asyncio.sleep(0.1)
                    continue
                if done >= TASKS:
                    break
                if killed_at is None and done >= KILL_AT * TASKS:
                    running_at_kill = await count_running(url)
                    killed_at = cluster.kill_postmaster(old_primary)
                    # When Patroni reports the standby promoted: the failover's own share.
                    promoted = asyncio.create_task(
                        asyncio.to_thread(cluster.wait_primary, new_primary)
                    )
                    for n in third_quarter:
                        items.put_nowait(n)
                elif killed_at is not None and switched_at is None:
                    # As soon as the old primary is back as the synchronous standby; the
                    # last quarter is queued first, so tasks are running and submits are in
                    # flight when Patroni shuts the primary down.
                    assert promoted is not None
                    promoted_after = await promoted - killed_at
                    await asyncio.to_thread(cluster.wait_sync, old_primary)
                    rejoined_after = time.time() - killed_at
                    for n in last_quarter:
                        items.put_nowait(n)
                    await until(lambda: len(acked) >= first_half + TASKS // 4 + TASKS // 8)
                    running_at_switchover = await count_running(url)
                    switched_at = time.time()
                    await asyncio.to_thread(cluster.switchover, new_primary, old_primary)
                    switched_by = time.time()  # Patroni answers once the new primary runs
                await asyncio.sleep(0.1)
            await items.join()
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            cut_off.terminate()  # its connection died with the old primary
            assert killed_at is not None and switched_at is not None and switched_by
            failover_s = await first_claim_after(url, killed_at)
            switchover_s = await longest_claim_pause(url, switched_at, switched_by)

        # The cut-off worker comes back after its lease ran out and the tasks were run by
        # others: every write with its old lease tokens is refused, and changes nothing.
        async with fresh_conn(url) as late:
            for task_id, token in zip(zombie_ids, zombie_tokens, strict=True):
                for sql, args in [
                    ("SELECT pgtasks.checkpoint($1, $2, 'double', '-1'::jsonb)", ()),
                    ("SELECT pgtasks.report_progress($1, $2, 99, 99, 'stale')", ()),
                    (
                        "SELECT pgtasks.log_many($1, $2, $3, $4)",
                        (["INFO"], ["stale line from a cut-off worker"]),
                    ),
                    ("SELECT pgtasks.finish_task($1, $2, '-1'::jsonb)", ()),
                ]:
                    with pytest.raises(asyncpg.PostgresError) as refused:
                        await late.execute(sql, task_id, token, *args)
                    assert refused.value.sqlstate == "PT002", (sql, refused.value)
            rejected = await late.fetch(
                "SELECT * FROM pgtasks.finish_tasks($1, $2, $3::jsonb[])",
                zombie_ids, zombie_tokens, ["-1"] * ZOMBIES,
            )  # fmt: skip
            assert len(rejected) == ZOMBIES

            # Every acknowledged task is there, once, and DONE with its own result.
            assert len(acked) == TASKS
            rows = await late.fetch(
                "SELECT id, status::text, (params->>'n')::int AS n, result, unique_key"
                " FROM pgtasks.tasks WHERE task_type = 'ha'"
            )
            by_id = {r["id"]: r for r in rows}
            assert len(rows) == TASKS, "a retried submit created a second task"
            assert set(acked.values()) == set(by_id)
            assert Counter(r["status"] for r in rows) == {"DONE": TASKS}
            assert all(r["result"] == 2 * r["n"] for r in rows)
            assert all(by_id[i]["n"] == n for n, i in acked.items())
            stale = await late.fetchval(
                "SELECT (SELECT count(*) FROM pgtasks.task_steps WHERE result = '-1'::jsonb)"
                " + (SELECT count(*) FROM pgtasks.task_logs WHERE message LIKE 'stale%')"
                " + (SELECT count(*) FROM pgtasks.tasks WHERE progress_message = 'stale')"
            )
            assert stale == 0
            lease_waits = await late.fetch(
                "SELECT task_id, error FROM pgtasks.task_errors"
                " WHERE error LIKE 'lease expired%' AND task_id <> ALL($1)",
                zombie_ids,
            )
            failed_attempts = await late.fetch(
                "SELECT left(error, 60), count(*) FROM pgtasks.task_errors"
                " WHERE task_id <> ALL($1) GROUP BY 1 ORDER BY 2 DESC",
                zombie_ids,
            )

        # Claims whose answer was lost, handed back by the workers' reconcile.
        handed_back = sum(
            int(m)
            for path in fleet.logs.values()
            for m in re.findall(r"handed back (\d+) task", path.read_text(errors="replace"))
        )
        seen = read_journals(journal)
        started, returned = seen["start"], seen["return"]
        # A task whose code returned is never started again: its final flush and its result
        # went through the failover.
        redone = {
            t: (started[t], returned[t])
            for t in returned
            if any(a > min(returned[t]) for a in started[t])
        }
        # A step's code runs once: its checkpoint went through the failover, and a later
        # attempt (after the task's own query failed) finds it.
        steps_rerun = {t: a for t, a in seen["step"].items() if len(a) > 1}
        ran_twice = sum(1 for a in started.values() if len(a) > 1)
        extra_runs = sum(len(a) - 1 for a in started.values())
        never_ran = set(by_id) - set(started)
        print(
            f"\nfailover: {TASKS} tasks, {WORKERS} workers x {CONCURRENCY};"
            f" kill -9 of the primary with {running_at_kill} running:"
            f" standby promoted within {promoted_after:.2f}s of the kill, first claim on the new"
            f" primary {failover_s:.2f}s after the kill;"
            f" switchover with {running_at_switchover} running: claims paused"
            f" {switchover_s:.2f}s; {ran_twice} tasks ran twice or more"
            f" ({extra_runs} extra runs); failed attempts"
            f" {[tuple(r) for r in failed_attempts]};"
            f" {handed_back} tasks of lost claim answers handed back,"
            f" {len(redone)} returned tasks redone, {len(steps_rerun)} steps run again,"
            f" {len(lease_waits)} lease waits; {len(set(resent))} submits sent again;"
            f" kill {killed_at - began:.1f}s into the drain,"
            f" old primary back as sync standby {rejoined_after:.1f}s after it,"
            f" drain over {time.time() - began:.1f}s after its start"
        )
        assert not never_ran, sorted(never_ran)[:10]
        assert not redone, list(redone.items())[:10]
        assert not steps_rerun, list(steps_rerun.items())[:10]
        assert not lease_waits, [tuple(r) for r in lease_waits][:10]
        # Both workers reconnected by themselves: none died.
        assert len(fleet.alive()) == WORKERS, fleet.tails()
    finally:
        for p in [*producers, *([keeper] if keeper is not None else [])]:
            p.cancel()
        if fleet is not None:
            fleet.stop_all()
        await asyncio.to_thread(cluster.destroy)
