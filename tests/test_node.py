"""The Node.js example worker and producer (examples/node) against a real database.

They are real `node` processes that speak only SQL, written from docs/worker-protocol.md:
these tests show the protocol is enough for a correct worker in another language, and
that Node and Python share one queue in both directions. Leases are short (2 s) so kills
are rescued quickly; no test asserts how fast anything is.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pgtasks import Client
from tests.conftest import ROOT, wait_for

NODE_DIR = ROOT / "examples" / "node"

pytestmark = pytest.mark.slow


class NodeWorker:
    """One `node worker.js`; its JSON event lines are collected as they arrive."""

    def __init__(self, proc: subprocess.Popen[str], stderr: Path) -> None:
        self.proc = proc
        self.stderr = stderr
        self.events: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.append(json.loads(line))
            except json.JSONDecodeError:
                self.events.append({"event": "text", "line": line})

    def seen(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e["event"] == event and all(e.get(k) == v for k, v in fields.items())
        ]

    async def wait_event(self, event: str, timeout: float = 60, **fields: Any) -> dict[str, Any]:
        """The first `event` with these fields. The timeout only bounds a hung test."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (found := self.seen(event, **fields)):
            if self.proc.poll() is not None or loop.time() > deadline:
                raise AssertionError(
                    f"no {event} {fields} from the Node worker (exit {self.proc.poll()}); "
                    f"events: {self.events[-10:]}; stderr: {self.stderr.read_text()[-2000:]}"
                )
            await asyncio.sleep(0.05)
        return found[0]


class Node:
    """Starts Node workers and producers for one test's database; kills what is left."""

    def __init__(self, node: str, dsn: str, tmp: Path) -> None:
        self.node = node
        self.dsn = dsn
        self.tmp = tmp
        self.workers: list[NodeWorker] = []

    def env(self, user: str | None, **settings: object) -> dict[str, str]:
        dsn = self.dsn if user is None else re.sub(r"//[^@/]+@", f"//{user}@", self.dsn)
        extra = {f"PGTASKS_{k.upper()}": str(v) for k, v in settings.items()}
        return {**os.environ, "DATABASE_URL": dsn, **extra}

    def worker(self, user: str | None = None, **settings: object) -> NodeWorker:
        """A worker logged in as `user` (default: the test database's owner)."""
        stderr = self.tmp / f"node-worker-{len(self.workers)}.err"
        proc = subprocess.Popen(
            [self.node, "worker.js"], cwd=NODE_DIR, env=self.env(user, **settings), text=True,
            stdout=subprocess.PIPE, stderr=stderr.open("w"),
        )  # fmt: skip
        w = NodeWorker(proc, stderr)
        self.workers.append(w)
        return w

    def produce(
        self,
        task_type: str,
        count: int,
        params: dict[str, Any] | None = None,
        user: str | None = None,
        **settings: object,
    ) -> list[int]:
        args = [self.node, "producer.js", task_type, str(count)]
        if params is not None:
            args.append(json.dumps(params))
        out = subprocess.run(
            args, cwd=NODE_DIR, env=self.env(user, **settings), capture_output=True, text=True,
            check=True,
        )  # fmt: skip
        ids: list[int] = json.loads(out.stdout)["ids"]
        return ids

    def kill_all(self) -> None:
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.kill()
            w.proc.wait(10)


@pytest.fixture
def node(dsn: str, tmp_path: Path) -> Iterator[Node]:
    exe = shutil.which("node")
    if exe is None:
        pytest.skip("node is not installed (.ci/run installs nodejs and npm)")
    if not (NODE_DIR / "node_modules" / "pg").is_dir():
        pytest.skip("node_modules missing: run npm ci in examples/node")
    n = Node(exe, dsn, tmp_path)
    try:
        yield n
    finally:
        n.kill_all()


async def _statuses(conn: asyncpg.Connection, ids: list[int]) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT status::text, count(*) FROM pgtasks.tasks WHERE id = ANY($1) GROUP BY 1", ids
    )
    return {r[0]: r[1] for r in rows}


async def test_node_workers_drain_python_submitted_tasks_exactly_once(dsn, conn, node):
    workers = [node.worker(lease=2, concurrency=10) for _ in range(2)]
    async with Client(dsn) as client:
        ids = await client.submit_many("node.add", [{"a": i, "b": 1} for i in range(500)])

    await wait_for(
        conn, "SELECT bool_and(status = 'DONE') FROM pgtasks.tasks WHERE id = ANY($1)", ids
    )
    results = await conn.fetch("SELECT id, result FROM pgtasks.tasks WHERE id = ANY($1)", ids)
    assert {r["id"]: r["result"] for r in results} == {
        tid: {"sum": i + 1} for i, tid in enumerate(ids)
    }
    # Exactly once: one claim per task, though two workers competed for them.
    claims = await conn.fetch(
        """SELECT task_id, count(*) AS n FROM pgtasks.task_history
            WHERE task_id = ANY($1) AND to_status = 'RUNNING' GROUP BY task_id""",
        ids,
    )
    assert len(claims) == 500
    assert {r["n"] for r in claims} == {1}
    done_by = await conn.fetchval(
        "SELECT count(DISTINCT worker_id) FROM pgtasks.task_history WHERE task_id = ANY($1) "
        "AND to_status = 'DONE'",
        ids,
    )
    assert done_by >= 1
    # Idle workers still heartbeat: both stay registered and alive after the drain.
    await wait_for(
        conn,
        "SELECT count(*) = 2 AND bool_and(alive AND last_seen > started_at) FROM pgtasks.workers",
    )
    for w in workers:
        w.proc.send_signal(signal.SIGTERM)
        assert w.proc.wait(30) == 0
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.workers") == 0


async def test_python_worker_drains_node_submitted_tasks(conn, node, spawn_worker):
    ids = node.produce("add", 50)
    one = node.produce("add", 1, {"a": 20, "b": 22})
    spawn_worker.start("--concurrency", "4", "--lease", "2")

    await wait_for(
        conn, "SELECT bool_and(status = 'DONE') FROM pgtasks.tasks WHERE id = ANY($1)", ids + one
    )
    rows = await conn.fetch("SELECT id, result FROM pgtasks.tasks WHERE id = ANY($1)", ids)
    assert {r["id"]: r["result"] for r in rows} == {
        tid: {"sum": 3 * i} for i, tid in enumerate(ids)
    }
    assert await conn.fetchval("SELECT result FROM pgtasks.tasks WHERE id = $1", one[0]) == {
        "sum": 42
    }
    runs = await conn.fetch(
        "SELECT task_id, count(*) FROM test_runs WHERE task_id = ANY($1) GROUP BY 1", ids
    )
    assert len(runs) == 50
    assert {r[1] for r in runs} == {1}


async def test_node_failures_use_retries_unless_permanent(conn, node):
    node.worker(lease=2, concurrency=4)
    retried = await conn.fetchval(
        "SELECT pgtasks.submit_task(task_type => 'node.fail', params => $1::jsonb, "
        "max_retries => 1)",
        {"message": "flaky", "retry_delay": 0.1},
    )
    permanent = await conn.fetchval(
        "SELECT pgtasks.submit_task(task_type => 'node.fail', params => $1::jsonb)",
        {"message": "hopeless", "permanent": True},
    )
    ids = [retried, permanent]
    await wait_for(
        conn, "SELECT bool_and(status = 'FAILED') FROM pgtasks.tasks WHERE id = ANY($1)", ids
    )
    rows = await conn.fetch(
        "SELECT task_id, attempt, error FROM pgtasks.task_attempt_errors "
        "WHERE task_id = ANY($1) ORDER BY task_id, attempt",
        ids,
    )
    assert [tuple(r) for r in rows] == [
        (retried, 1, "flaky"),
        (retried, 2, "flaky"),
        (permanent, 1, "hopeless"),
    ]


async def test_a_node_task_waits_for_an_event_that_a_node_task_sends(conn, node):
    """Both sides through the SQL functions only: node.approval parks in wait_for_event
    (holding no slot of the one-slot worker), node.approve sends the event with
    send_event, and the approval resumes with the payload without spending a retry."""
    w = node.worker(lease=2, concurrency=1)
    submit = "SELECT pgtasks.submit_task(task_type => $1, params => $2::jsonb)"
    waiting = await conn.fetchval(submit, "node.approval", {})
    await w.wait_event("parked", task_id=str(waiting), waits_for="approved")
    assert await conn.fetchval(
        "SELECT status = 'COMMIT' AND run_at > pgtasks.now() FROM pgtasks.tasks WHERE id = $1",
        waiting,
    )
    sender = await conn.fetchval(
        submit, "node.approve", {"task_id": waiting, "payload": {"by": "node"}}
    )
    await wait_for(
        conn, "SELECT bool_and(status = 'DONE') FROM pgtasks.tasks WHERE id = ANY($1)",
        [waiting, sender],
    )  # fmt: skip
    rows = await conn.fetch(
        "SELECT id, result, retry_count FROM pgtasks.tasks WHERE id = ANY($1) ORDER BY id",
        [waiting, sender],
    )
    assert [(r["result"], r["retry_count"]) for r in rows] == [
        ({"payload": {"by": "node"}, "attempt": 2}, 0),
        ({"delivered": True}, 0),
    ]


async def test_an_oversized_result_fails_its_task_alone(conn, node):
    """A result over settings.max_result_bytes ends its own task FAILED, without a retry,
    and the other results of the same finish batch are stored."""
    await conn.execute("SELECT pgtasks.configure(max_result_bytes => 100)")
    big = await conn.fetchval(
        "SELECT pgtasks.submit_task(task_type => 'node.add', params => $1::jsonb)",
        {"a": "x" * 80, "b": "y" * 80},
    )
    small = node.produce("node.add", 20)
    node.worker(lease=2, concurrency=30)
    ids = [big, *small]
    await wait_for(
        conn,
        "SELECT bool_and(status IN ('DONE', 'FAILED')) FROM pgtasks.tasks WHERE id = ANY($1)",
        ids,
    )
    assert await _statuses(conn, ids) == {"DONE": 20, "FAILED": 1}
    row = await conn.fetchrow(
        "SELECT status::text, attempt, retry_count, error FROM pgtasks.tasks WHERE id = $1", big
    )
    assert (row["status"], row["attempt"], row["retry_count"]) == ("FAILED", 1, 0)
    assert "max_result_bytes" in row["error"]


async def test_long_log_lines_are_cut_to_the_limit_not_fatal(conn, node):
    """PT204 refuses a log batch with a line over settings.max_log_bytes; the worker reads
    the limit, cuts the lines with a note of their size, and the task carries on."""
    await conn.execute("SELECT pgtasks.configure(max_log_bytes => 20)")
    tid = await conn.fetchval(
        "SELECT pgtasks.submit_task(task_type => 'node.steps', params => $1::jsonb)",
        {"n": 2, "sleep_ms": 0},
    )
    node.worker(lease=2)
    await wait_for(conn, "SELECT status = 'DONE' FROM pgtasks.tasks WHERE id = $1", tid)
    lines = await conn.fetch(
        "SELECT message FROM pgtasks.task_log_lines WHERE task_id = $1 ORDER BY id", tid
    )
    # "step 0 ran in attempt 1" is 23 bytes: 4 of them are kept, and the note says so.
    assert [r["message"] for r in lines] == ["step [cut: 23 bytes]"] * 2


async def test_killed_node_worker_is_rescued_and_the_next_one_skips_finished_steps(conn, node):
    first = node.worker(lease=2, concurrency=4)
    ids = [
        await conn.fetchval(
            "SELECT pgtasks.submit_task(task_type => 'node.steps', params => $1::jsonb)",
            {"n": 6, "sleep_ms": 300},
        )
        for _ in range(4)
    ]
    # Every task has checkpointed at least one step before the kill.
    await wait_for(
        conn,
        "SELECT count(DISTINCT task_id) = 4 FROM pgtasks.task_steps WHERE task_id = ANY($1)",
        ids,
    )
    first.proc.kill()
    first.proc.wait(10)
    assert await _statuses(conn, ids) == {"RUNNING": 4}  # only the leases can free them now

    # No Python process anywhere: the second Node worker's maintain() timer rescues them.
    second = node.worker(lease=2, concurrency=4)
    await wait_for(
        conn, "SELECT bool_and(status = 'DONE') FROM pgtasks.tasks WHERE id = ANY($1)", ids
    )
    assert second.seen("rescued")
    rows = await conn.fetch(
        "SELECT attempt, retry_count, result FROM pgtasks.tasks WHERE id = ANY($1)", ids
    )
    assert all(r["attempt"] >= 2 and r["retry_count"] >= 1 for r in rows)
    assert {json.dumps(r["result"]) for r in rows} == {json.dumps({"steps": 6, "total": 15})}
    # step-0 was checkpointed by attempt 1; the rescuing attempt read it and did not rerun it.
    first_steps = await conn.fetch(
        "SELECT attempt FROM pgtasks.task_steps WHERE task_id = ANY($1) AND name = 'step-0'", ids
    )
    assert [r["attempt"] for r in first_steps] == [1] * 4
    reruns = await conn.fetchval(
        "SELECT count(*) FROM pgtasks.task_log_lines WHERE task_id = ANY($1) "
        "AND message = 'step 0 ran in attempt 2'",
        ids,
    )
    assert reruns == 0


async def test_cancel_reaches_the_node_worker_and_false_alarms_do_not(dsn, conn, node):
    # A long lease: heartbeats (which would also find the task lost) are 10 s apart, so
    # only the NOTIFY can stop this task, which sleeps 10 minutes in its one step.
    worker = node.worker(lease=30, concurrency=1)
    await worker.wait_event("listening")
    tid = await conn.fetchval(
        "SELECT pgtasks.submit_task(task_type => 'node.steps', params => $1::jsonb)",
        {"n": 1, "sleep_ms": 600_000},
    )
    await wait_for(conn, "SELECT status = 'RUNNING' FROM pgtasks.tasks WHERE id = $1", tid)
    attempt = await conn.fetchval("SELECT attempt FROM pgtasks.tasks WHERE id = $1", tid)

    # Notices anyone may send: one that is not a task id, and the id of this task, which is
    # not cancelled; the worker asks the database (a heartbeat of its tokens) before it stops
    # anything, and runs on.
    for payload in (f"{tid}:{attempt}", str(tid)):
        await conn.execute("SELECT pg_notify('pgtasks_cancel', $1)", payload)
        notice = await worker.wait_event("cancel_notice", payload=payload)
        assert notice["cancelled"] is False
    assert not worker.seen("dropped")

    async with Client(dsn) as client:
        assert await client.cancel(tid) == "RUNNING"
    event = await worker.wait_event("dropped", task_id=str(tid))
    assert event["why"] == "cancelled"
    assert worker.seen("cancel_notice", task_id=str(tid), cancelled=True)

    # The slot is free again: the worker's only slot runs the next task.
    [nxt] = node.produce("node.add", 1, {"a": 1, "b": 2})
    await wait_for(conn, "SELECT status = 'DONE' FROM pgtasks.tasks WHERE id = $1", nxt)
    status = await conn.fetchval("SELECT status::text FROM pgtasks.tasks WHERE id = $1", tid)
    assert status == "CANCELLED"


async def test_a_node_task_is_told_when_its_soft_deadline_passes(conn, node):
    """claim_tasks' soft_deadline reaches the handler as ctx.softSignal: the task that
    waits for it is told and finishes well before its hard limit; a task without a soft
    limit is never told."""
    worker = node.worker(lease=2, concurrency=2)
    told = await conn.fetchval(
        "SELECT pgtasks.submit_task(task_type => 'node.soft', params => $1::jsonb, "
        "timeout => interval '1 hour', soft_timeout => interval '0.2 seconds')",
        {"wait": True},
    )
    plain = await conn.fetchval(
        "SELECT pgtasks.submit_task(task_type => 'node.soft', params => $1::jsonb)",
        {"wait": False},
    )
    ids = [told, plain]
    await wait_for(
        conn, "SELECT bool_and(status = 'DONE') FROM pgtasks.tasks WHERE id = ANY($1)", ids
    )
    rows = await conn.fetch("SELECT id, result FROM pgtasks.tasks WHERE id = ANY($1)", ids)
    assert {r["id"]: r["result"] for r in rows} == {
        told: {"soft_deadline_passed": True, "attempt": 1},
        plain: {"soft_deadline_passed": False, "attempt": 1},
    }
    assert worker.seen("soft_deadline", task_id=str(told))
    assert not worker.seen("soft_deadline", task_id=str(plain))


async def test_sigterm_hands_running_tasks_back_without_using_a_retry(conn, node):
    worker = node.worker(lease=2, concurrency=2, grace=0)
    tid = await conn.fetchval(
        "SELECT pgtasks.submit_task(task_type => 'node.steps', params => $1::jsonb)",
        {"n": 200, "sleep_ms": 100},
    )
    await wait_for(conn, "SELECT count(*) > 0 FROM pgtasks.task_steps WHERE task_id = $1", tid)
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(30) == 0
    assert worker.seen("yielded", task_id=str(tid))
    row = await conn.fetchrow(
        "SELECT status::text, retry_count, worker_id FROM pgtasks.tasks WHERE id = $1", tid
    )
    assert tuple(row) == ("COMMIT", 0, None)
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.workers") == 0


async def test_node_worker_and_producer_need_only_their_group_roles(conn, node):
    """With the roles of migration 0004 the producer logs in with pgtasks_submitter only and
    the workers with pgtasks_worker only: the protocol uses nothing else, steps included."""
    if await conn.fetchval("SELECT to_regrole('pgtasks_worker') IS NULL"):
        pytest.skip("the pgtasks group roles come with migration 0004")
    suffix = uuid.uuid4().hex[:8]
    worker_role, producer_role = f"node_worker_{suffix}", f"node_producer_{suffix}"
    await conn.execute(
        f"CREATE ROLE {worker_role} LOGIN; GRANT pgtasks_worker TO {worker_role}; "
        f"CREATE ROLE {producer_role} LOGIN; GRANT pgtasks_submitter TO {producer_role}"
    )
    try:
        ids = node.produce("node.add", 20, user=producer_role)
        [steps] = node.produce("node.steps", 1, {"n": 50, "sleep_ms": 100}, user=producer_role)
        first = node.worker(user=worker_role, lease=2, grace=0)
        await wait_for(
            conn, "SELECT count(*) > 0 FROM pgtasks.task_steps WHERE task_id = $1", steps
        )
        first.proc.send_signal(signal.SIGTERM)
        assert first.proc.wait(30) == 0
        assert first.seen("yielded", task_id=str(steps))
        # The next worker reads the steps through task_steps_of and resumes after them.
        node.worker(user=worker_role, lease=2)
        await wait_for(
            conn,
            "SELECT bool_and(status = 'DONE') FROM pgtasks.tasks WHERE id = ANY($1)",
            [*ids, steps],
        )
        step0 = await conn.fetchval(
            "SELECT attempt FROM pgtasks.task_steps WHERE task_id = $1 AND name = 'step-0'", steps
        )
        assert step0 == 1
        users = await conn.fetch(
            "SELECT DISTINCT to_status::text, db_user FROM pgtasks.task_history "
            "WHERE task_id = ANY($1) AND to_status IN ('PENDING', 'RUNNING')",
            [*ids, steps],
        )
        assert {tuple(r) for r in users} == {
            ("PENDING", producer_role),
            ("RUNNING", worker_role),
        }
    finally:
        node.kill_all()
        for role in (worker_role, producer_role):
            await conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


async def test_a_node_producer_passes_its_trace_context_through_sql(conn, node):
    """PGTASKS_TRACEPARENT and PGTASKS_TRACESTATE become the session's pgtasks.traceparent
    and pgtasks.tracestate: every task of the batch, and the single submit, carry them; the
    Python worker's spans join that trace (tests/test_tracing.py shows the spans)."""
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    ts = "rojo=00f067aa0ba902b7"
    ids = node.produce("add", 3, traceparent=tp, tracestate=ts)
    [one] = node.produce("add", 1, traceparent=tp)
    plain = node.produce("add", 2)
    got = {r["id"]: (r["traceparent"], r["tracestate"]) for r in await conn.fetch(
        "SELECT id, traceparent, tracestate FROM pgtasks.tasks")}  # fmt: skip
    assert [got[i] for i in (*ids, one)] == [(tp, ts)] * 3 + [(tp, None)]
    assert [got[i] for i in plain] == [(None, None)] * 2
