"""Concurrency permutations (STYLE §8): two sessions race on one task, every
interleaving of their steps is run, and each must end in exactly one outcome.

Modelled on PostgreSQL's isolation tester (and pgmq's test/specs): each session runs its
steps in order, in one transaction ending with a commit step. A step that waits for a lock
stays pending (detected with pg_blocking_pids(), never with a timer) while the other session
goes on; an interleaving that asks a blocked session for its next step cannot happen and is
skipped, as the isolation tester does.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest


@dataclass
class Outcome:
    rows: list[tuple[Any, ...]] | None = None
    sqlstate: str | None = None


@dataclass
class Session:
    name: str
    conn: psycopg.Connection
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1))
    pending: Future[Outcome] | None = None

    def submit(self, sql: str | None) -> Future[Outcome]:
        return self.pool.submit(self._run, sql)

    def _run(self, sql: str | None) -> Outcome:
        if sql is None:  # the commit step (a failed transaction rolls back)
            self.conn.commit()
            return Outcome()
        try:
            cur = self.conn.execute(sql)
            return Outcome(rows=cur.fetchall() if cur.description else [])
        except psycopg.Error as exc:
            self.conn.rollback()
            return Outcome(sqlstate=exc.sqlstate)


def settle(monitor: psycopg.Connection, s: Session, fut: Future[Outcome]) -> bool:
    """Wait until the step is done (True) or waits for a lock another session holds (False)."""
    pid = s.conn.info.backend_pid
    while not fut.done():
        blocked = monitor.execute("SELECT pg_blocking_pids(%s) <> '{}'", (pid,)).fetchone()
        if blocked and blocked[0] and not fut.done():
            return False
    return True


def run_permutation(
    dsn: str, setup: str, a: list[str | None], b: list[str | None], order: tuple[str, ...]
) -> dict[str, list[Outcome]] | None:
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(setup)
    steps = {"a": list(a), "b": list(b)}
    results: dict[str, list[Outcome]] = {"a": [], "b": []}  # "blocked" when a step waited
    with (
        psycopg.connect(dsn, autocommit=True) as monitor,
        psycopg.connect(dsn) as ca,
        psycopg.connect(dsn) as cb,
    ):
        sessions = {"a": Session("a", ca), "b": Session("b", cb)}
        try:
            for name in order:
                s = sessions[name]
                if s.pending is not None:
                    return None  # this interleaving cannot happen: the session is blocked
                fut = s.submit(steps[name].pop(0))
                if settle(monitor, s, fut):
                    results[name].append(fut.result())
                else:
                    s.pending = fut
                    results.setdefault("blocked", [])
                # A commit may have released the other session: let it finish or block again.
                for other in sessions.values():
                    if other.pending is not None and settle(monitor, other, other.pending):
                        results[other.name].append(other.pending.result())
                        other.pending = None
            for s in sessions.values():
                if s.pending is not None:
                    results[s.name].append(s.pending.result())
        finally:
            # An abandoned interleaving: end the free sessions' transactions, which lets the
            # blocked one finish, then end that one's too.
            for s in sorted(sessions.values(), key=lambda s: s.pending is not None):
                if s.pending is not None:
                    s.pending.result()
                s.pool.submit(s.conn.rollback).result()
                s.pool.shutdown(wait=True)
    return results


def interleavings(na: int, nb: int) -> list[tuple[str, ...]]:
    out = []
    for pos in itertools.combinations(range(na + nb), na):
        out.append(tuple("a" if i in pos else "b" for i in range(na + nb)))
    return out


def state(dsn: str, sql: str) -> tuple[Any, ...]:
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute(sql).fetchone()
        assert row is not None
        return tuple(row)


@dataclass
class Spec:
    setup: str
    a: list[str | None]
    b: list[str | None]
    final: str
    check: Callable[[dict[str, list[Outcome]], tuple[Any, ...]], None]
    blocks: bool = True


RESET = """
DELETE FROM pgtasks.tasks;
SELECT setval(pg_get_serial_sequence('pgtasks.tasks', 'id'), 1, false);
DROP TABLE IF EXISTS public.held;
"""
# Task 1, PENDING.
PENDING = "SELECT pgtasks.submit_task('t');"
# The lease tokens the setup's claim returned, which its worker presents (public.held).
HELD = "CREATE TABLE public.held AS SELECT id, lease_token FROM pgtasks.claim_tasks"
# Task {n}'s token as its worker holds it, also after the attempt lost the task.
TOKEN = "(SELECT h.lease_token FROM public.held h WHERE h.id = {})"
# Task 1, RUNNING under worker 'w' at attempt 1.
RUNNING = PENDING + HELD + "('w', max_tasks => 1);"
# ... whose lease has expired (its worker died).
EXPIRED = RUNNING + "UPDATE pgtasks.tasks SET lease_expires_at = now() - interval '1 second';"
STATUS = "SELECT status::text, attempt, retry_count FROM pgtasks.tasks WHERE id = 1"


def _claim_vs_cancel(r: dict[str, list[Outcome]], final: tuple[Any, ...]) -> None:
    claimed = len(r["a"][0].rows or [])
    cancelled_from = r["b"][0].rows[0][0] if r["b"][0].rows else None
    assert final[0] == "CANCELLED"
    # Exactly one story: claimed then cancelled while RUNNING, or cancelled before a claim.
    assert (claimed, cancelled_from) in {(1, "RUNNING"), (0, "PENDING")}


def _claim_vs_claim(r: dict[str, list[Outcome]], final: tuple[Any, ...]) -> None:
    got = [len(r[s][0].rows or []) for s in "ab"]
    assert sorted(got) == [0, 1] and final[:2] == ("RUNNING", 1)


def _heartbeat_vs_rescue(r: dict[str, list[Outcome]], final: tuple[Any, ...]) -> None:
    lost = tuple(row[0] for row in r["a"][0].rows or [])
    rescued = r["b"][0].rows[0][0]
    # Either the heartbeat won (lease extended, nothing to rescue) or the rescue did (and the
    # heartbeat reports the task lost, so the worker stops it).
    assert (lost, rescued, final[0]) in {((), 0, "RUNNING"), ((1,), 1, "COMMIT")}


def _fail_vs_rescue(r: dict[str, list[Outcome]], final: tuple[Any, ...]) -> None:
    failed = r["a"][0].sqlstate is None
    rescued = r["b"][0].rows[0][0] if r["b"][0].rows else None
    assert (failed, rescued) in {(True, 0), (False, 1)}
    assert not failed or r["a"][0].rows == [("COMMIT",)]
    assert failed or r["a"][0].sqlstate == "PT002"
    assert final == ("COMMIT", 1, 1)  # one failed attempt recorded, whoever recorded it


def _finish_vs_cancel(r: dict[str, list[Outcome]], final: tuple[Any, ...]) -> None:
    finish, cancel = r["a"][0].sqlstate, r["b"][0].sqlstate
    assert (finish, cancel, final[0]) in {(None, "PT004", "DONE"), ("PT002", None, "CANCELLED")}


def _finish_vs_retry(r: dict[str, list[Outcome]], final: tuple[Any, ...]) -> None:
    # The task was cancelled under its worker; the operator retries it while the old worker
    # tries to finish with its stale token. The stale finish never wins.
    assert r["a"][0].sqlstate == "PT002" and r["b"][0].sqlstate is None
    assert final[0] == "PENDING"


def _finish_vs_claim_after_yield(r: dict[str, list[Outcome]], final: tuple[Any, ...]) -> None:
    # Worker a handed the task back (yield) and now races a stale finish against b's claim.
    claimed = len(r["b"][0].rows or [])
    assert r["a"][0].sqlstate == "PT002" and claimed == 1 and final[:2] == ("RUNNING", 2)


def _heartbeat_vs_cancel(r: dict[str, list[Outcome]], final: tuple[Any, ...]) -> None:
    lost = tuple(row[0] for row in r["a"][0].rows or [])
    # The heartbeat either extended a lease the cancel then ended, or found the task gone and
    # reported it lost; the cancel always saw it RUNNING (so the worker is notified).
    assert r["b"][0].rows == [("RUNNING",)] and final[0] == "CANCELLED"
    assert lost in {(), (1,)}


def _yield_vs_cancel(r: dict[str, list[Outcome]], final: tuple[Any, ...]) -> None:
    yielded, cancelled = r["a"][0].sqlstate, (r["b"][0].rows or [("",)])[0][0]
    # Yield first: the cancel finds it waiting (COMMIT). Cancel first: the yield is fenced.
    assert (yielded, cancelled) in {(None, "COMMIT"), ("PT002", "RUNNING")}
    assert final[0] == "CANCELLED"


FINISH = "SELECT * FROM pgtasks.finish_tasks(ARRAY[{0}::bigint], ARRAY[{1}], ARRAY['{0}'::jsonb])"
FINISH_1 = FINISH.format(1, TOKEN.format(1))
FINISH_2 = FINISH.format(2, TOKEN.format(2))
# The single calls of task 1's worker, with its token.
T1 = TOKEN.format(1)
BEAT_1 = f"SELECT * FROM pgtasks.heartbeat('w', ARRAY[1::bigint], ARRAY[{T1}])"
FINISH_TASK_1 = f"SELECT pgtasks.finish_task(1, {T1}, '1')"
YIELD_1 = f"SELECT pgtasks.yield_task(1, {T1})"
# Workflows (sql/0012). Tasks 1 and 2 RUNNING under 'w' at attempt 1; task 3 WAITING on both.
TWO_PARENTS = (
    "SELECT pgtasks.submit_task('t'); SELECT pgtasks.submit_task('t');"
    + HELD
    + "('w', max_tasks => 2);"
    "SELECT pgtasks.submit_task('t', depends_on => ARRAY[1, 2]::bigint[]);"
)
# Its status, unmet parents, and how many times it was released (this setup's events only:
# RESET restarts the ids, task_events keeps older runs' rows).
CHILD = """
SELECT t.status::text, t.waiting_on,
       (SELECT count(*) FROM pgtasks.task_events e
         WHERE e.task_id = t.id AND e.to_status = 'PENDING' AND e.at >= t.created_at)
  FROM pgtasks.tasks t WHERE t.id = {}
"""


def _released_once(r: dict[str, list[Outcome]], final: tuple[Any, ...]) -> None:
    # Exactly one move to PENDING (a release, or an insert as PENDING when the parent had
    # already finished), never WAITING forever.
    assert all(o.sqlstate is None for o in r["a"] + r["b"]), r
    assert final == ("PENDING", 0, 1)


# The child of a parent that fails (no retries left) while the child is being submitted.
CHILD_OF_FAILED = """
SELECT coalesce((SELECT t.status::text FROM pgtasks.tasks t WHERE t.id = 2), 'none'),
       (SELECT t.cancelled_by FROM pgtasks.tasks t WHERE t.id = 2),
       (SELECT count(*) FROM pgtasks.task_events e JOIN pgtasks.tasks t ON t.id = e.task_id
         WHERE e.task_id = 2 AND e.to_status = 'CANCELLED' AND e.at >= t.created_at)
"""


def _cancelled_once(r: dict[str, list[Outcome]], final: tuple[Any, ...]) -> None:
    # The submit saw the parent FAILED and refused (PT507), or its child was cancelled by
    # the failure exactly once, whichever committed first; never WAITING forever.
    assert r["b"][0].sqlstate is None, r
    if r["a"][0].sqlstate is not None:
        assert r["a"][0].sqlstate == "PT507" and final[0] == "none", r
    else:
        assert final == ("CANCELLED", 1, 1), r


SPECS = {
    "claim vs cancel": Spec(
        PENDING, ["SELECT id FROM pgtasks.claim_tasks('a', max_tasks => 1)", None],
        ["SELECT pgtasks.cancel_task(1)::text", None], STATUS, _claim_vs_cancel),
    "claim vs claim": Spec(
        PENDING, ["SELECT id FROM pgtasks.claim_tasks('a', max_tasks => 1)", None],
        ["SELECT id FROM pgtasks.claim_tasks('b', max_tasks => 1)", None], STATUS,
        _claim_vs_claim, blocks=False),
    "heartbeat vs rescue": Spec(
        EXPIRED, [BEAT_1, None],
        ["SELECT pgtasks.rescue_expired()", None], STATUS, _heartbeat_vs_rescue),
    "fail vs rescue": Spec(
        EXPIRED, [f"SELECT pgtasks.fail_task(1, {T1}, 'boom')::text", None],
        ["SELECT pgtasks.rescue_expired()", None], STATUS, _fail_vs_rescue),
    "finish vs cancel": Spec(
        RUNNING, [FINISH_TASK_1, None],
        ["SELECT pgtasks.cancel_task(1)", None], STATUS, _finish_vs_cancel),
    "heartbeat vs cancel": Spec(
        RUNNING, [BEAT_1, None],
        ["SELECT pgtasks.cancel_task(1)::text", None], STATUS, _heartbeat_vs_cancel),
    "yield vs cancel": Spec(
        RUNNING, [YIELD_1, None],
        ["SELECT pgtasks.cancel_task(1)::text", None], STATUS, _yield_vs_cancel),
    "finish vs retry": Spec(
        RUNNING + "SELECT pgtasks.cancel_task(1);",
        [FINISH_TASK_1, None],
        ["SELECT pgtasks.retry_task(1)", None], STATUS, _finish_vs_retry,
        blocks=False),  # a stale token matches no row, so it locks (and waits for) none
    "stale finish vs claim": Spec(
        RUNNING + YIELD_1 + ";",
        [FINISH_TASK_1, None],
        ["SELECT id FROM pgtasks.claim_tasks('b', max_tasks => 1)", None], STATUS,
        _finish_vs_claim_after_yield, blocks=False),
    "last two parents finish at once": Spec(
        TWO_PARENTS, [FINISH_1, None], [FINISH_2, None], CHILD.format(3), _released_once),
    "submit with depends_on vs the parent's finish": Spec(
        RUNNING, ["SELECT pgtasks.submit_task('t', depends_on => ARRAY[1]::bigint[])", None],
        [FINISH_TASK_1, None], CHILD.format(2), _released_once),
    "submit with depends_on vs the parent's failure": Spec(
        "SELECT pgtasks.submit_task('t', max_retries => 0);"
        + HELD + "('w', max_tasks => 1);",
        ["SELECT pgtasks.submit_task('t', depends_on => ARRAY[1]::bigint[])", None],
        [f"SELECT pgtasks.fail_task(1, {T1}, 'boom')::text", None], CHILD_OF_FAILED,
        _cancelled_once),
}  # fmt: skip


@pytest.mark.parametrize("name", list(SPECS))
def test_every_interleaving_has_one_outcome(dsn, name):
    spec = SPECS[name]
    ran = blocked = 0
    for order in interleavings(len(spec.a), len(spec.b)):
        results = run_permutation(dsn, RESET + spec.setup, spec.a, spec.b, order)
        if results is None:
            continue
        ran += 1
        blocked += "blocked" in results
        final = state(dsn, spec.final)
        try:
            spec.check(results, final)
        except AssertionError as exc:
            raise AssertionError(f"{name}, order {''.join(order)}: {results} {final}") from exc
    assert ran >= 3, "most interleavings must be possible"
    # SKIP LOCKED claims and rescues never wait, nor does a stale token (it matches no row);
    # the others must have met a lock at least once.
    assert bool(blocked) == spec.blocks, blocked
