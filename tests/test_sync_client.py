"""SyncClient is Client, blocking: every public method has a twin with the same parameters,
and the twins work against a real database from a plain thread."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import pytest

from pgtasks import Client, PgTasksError, SyncClient, chain, task_node
from pgtasks.workflows import SubmittedWorkflow

#: Public attributes of Client that are not methods, and why SyncClient has no twin.
NOT_METHODS = {
    "pool": "an asyncpg pool belongs to the event loop it was made on; SyncClient's is private",
}


def _public_methods(cls: type) -> dict[str, Callable[..., Any]]:
    return {
        name: member
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_") and inspect.isfunction(member)
    }


def _parameters(fn: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    """(name, kind, default) of each parameter but `self`, following functools.wraps."""
    params = list(inspect.signature(fn).parameters.values())[1:]
    return [(p.name, p.kind, p.default) for p in params]


def twin_mismatches(async_cls: type, sync_cls: type) -> list[str]:
    """What keeps `sync_cls` from being a twin of `async_cls`: a public method missing, or
    one whose parameters differ in name, kind or default."""
    problems = []
    twins = _public_methods(sync_cls)
    for name, method in sorted(_public_methods(async_cls).items()):
        twin = twins.get(name)
        if twin is None:
            problems.append(f"{name}: no twin")
        elif _parameters(twin) != _parameters(method):
            problems.append(f"{name}: {_parameters(twin)} != {_parameters(method)}")
    return problems


def test_every_public_client_method_has_a_twin_with_the_same_parameters():
    assert twin_mismatches(Client, SyncClient) == []
    # Methods are functions; anything else public on Client needs a decision written down.
    others = {
        name
        for name, _ in inspect.getmembers(Client)
        if not name.startswith("_") and name not in _public_methods(Client)
    }
    assert others == set(NOT_METHODS)
    assert len(_public_methods(Client)) >= 40  # the check sees the methods, not nothing


def test_the_twin_check_reports_a_dropped_keyword_a_changed_default_and_a_missing_method():
    class Drifted(SyncClient):
        def submit(self, task: Any, params: Any = None, *, queue: str | None = None) -> int:
            return 0

        def wait(self, task_id: int, *, timeout: float | None = 5.0, poll_interval: float = 1.0):
            return None

    del_name = "trigger_schedule"

    class Missing:
        pass

    for name, member in _public_methods(SyncClient).items():
        if name != del_name:
            setattr(Missing, name, member)
    found = twin_mismatches(Client, Drifted)
    assert [p.split(":")[0] for p in found] == ["submit", "wait"]
    assert "unique_key" in found[0]
    assert twin_mismatches(Client, Missing) == [f"{del_name}: no twin"]


async def test_the_twins_against_the_database_from_a_plain_thread(dsn, conn):
    def work() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with SyncClient(dsn) as tasks:
            first = tasks.submit("noop", {"n": 1}, queue="sync", unique_key="k1")
            again = tasks.submit("noop", {"n": 2}, queue="sync", unique_key="k1")
            out["unique"] = (first.created, again.created, int(again) == int(first))
            out["limited"] = tasks.submit(
                "noop", queue="sync", concurrency_key="c", concurrency_limit=2
            )
            out["many"] = tasks.submit_many(
                "noop", [{"i": 1}, {"i": 2}], queue="sync", unique_keys=["m1", None]
            )
            out["listed"] = [t.id for t in tasks.list_tasks(queue="sync")]
            tasks.configure_queue("sync", max_running=3)
            out["queue"] = [q for q in tasks.queues() if q["queue"] == "sync"]
            wf = tasks.submit(chain(task_node("noop", name="a"), task_node("noop", name="b")))
            out["workflow"] = (wf, tasks.workflow(wf)["nodes"])
            out["cancelled"] = tasks.cancel_many(queue="sync")
            out["followed"] = [info.status for info, _ in tasks.follow(int(first))]
            with pytest.raises(PgTasksError, match="cannot submit inside your transaction"):
                tasks.submit("noop", connection=object())
        with pytest.raises(RuntimeError, match="closed"):
            tasks.get(int(first))
        return out

    out = await asyncio.to_thread(work)
    assert out["unique"] == (True, False, True)
    rows = {
        r["id"]: r
        for r in await conn.fetch(
            "SELECT id, unique_key, concurrency_key, status::text FROM pgtasks.tasks"
        )
    }
    limited = rows[out["limited"]]
    assert (limited["concurrency_key"], limited["unique_key"]) == ("c", None)
    assert [rows[i]["unique_key"] for i in out["many"]] == ["m1", None]
    assert sorted(out["listed"]) == sorted(
        i for i, r in rows.items() if i not in out["workflow"][0].nodes.values()
    )
    assert out["queue"][0]["max_running"] == 3
    wf, nodes = out["workflow"]
    assert isinstance(wf, SubmittedWorkflow) and len(nodes) == 2
    assert sorted(out["cancelled"]) == sorted(out["listed"])
    assert out["followed"] == ["CANCELLED"]  # a finished task: one state, then the end
    assert all(rows[i]["status"] == "CANCELLED" for i in out["listed"])
