"""Declaring task types: backoff_base (and its old name retry_delay), `.s()` on functions and
classes, and the submit rules a single submit and a workflow node share."""

from __future__ import annotations

import warnings
from datetime import timedelta
from typing import Any

import pytest

from pgtasks import BaseTask, Client, PgTasksError, Registry, chain, task_register
from pgtasks.context import TaskContext
from pgtasks.workflows import TaskNode


def test_backoff_base_is_the_declared_backoff_and_retry_delay_still_means_it():
    reg = Registry()

    @task_register("new_name", into=reg, backoff_base=2.5)
    async def new_name(ctx: TaskContext, params: dict[str, Any]) -> None:
        return None

    with pytest.warns(DeprecationWarning, match="now called backoff_base"):

        @task_register("old_name", into=reg, retry_delay=2.5)
        async def old_name(ctx: TaskContext, params: dict[str, Any]) -> None:
            return None

    assert reg.specs["new_name"].backoff_base == reg.specs["old_name"].backoff_base
    assert reg.specs["old_name"].backoff_base == timedelta(seconds=2.5)
    with pytest.raises(PgTasksError, match="backoff_base only"):
        task_register("both", into=reg, backoff_base=1, retry_delay=1)


def test_a_class_attribute_retry_delay_warns_and_sets_the_backoff_base():
    reg = Registry()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name warns about nothing

        @task_register("cls_new", into=reg)
        class New(BaseTask):
            backoff_base = 3

    with pytest.warns(DeprecationWarning, match=r"Old\.retry_delay"):

        @task_register("cls_old", into=reg)
        class Old(BaseTask):
            retry_delay = 3

    assert reg.specs["cls_new"].backoff_base == reg.specs["cls_old"].backoff_base
    assert reg.specs["cls_old"].backoff_base == timedelta(seconds=3)
    assert (New.task_type, Old.task_type) == ("cls_new", "cls_old")


def test_s_makes_a_node_of_a_function_and_of_a_class_and_refuses_unknown_options():
    reg = Registry()

    @task_register("fn_node", into=reg)
    async def fn(ctx: TaskContext, params: dict[str, Any]) -> int:
        return 1

    @task_register("cls_node", into=reg)
    class Cls(BaseTask):
        pass

    a = fn.s({"x": 1}, queue="q", name="first")
    b = Cls.s(priority=3)
    assert isinstance(a, TaskNode) and isinstance(b, TaskNode)
    assert (a.task_type, a.params, a.name, a.options) == (
        "fn_node",
        {"x": 1},
        "first",
        {"queue": "q"},
    )
    assert (b.task_type, b.options) == ("cls_node", {"priority": 3})
    with pytest.raises(PgTasksError, match="unknown workflow node option"):
        fn.s(queu="q")  # type: ignore[call-arg]
    assert fn.task_type == "fn_node"  # still the function, with its type name


async def test_a_workflow_node_and_a_single_submit_get_the_same_policy_and_keys(dsn, conn):
    from pgtasks import registry

    @task_register(
        "same_rules", queue="rules", max_retries=4, timeout=30, backoff_base=7,
        concurrency_key=lambda p: f"c-{p['k']}", concurrency_limit=2,
    )  # fmt: skip
    async def same_rules(ctx: TaskContext, params: dict[str, Any]) -> None:
        return None

    try:
        async with Client(dsn) as client:
            alone = await client.submit(same_rules, {"k": 1})
            wf = await client.submit(chain(same_rules.s({"k": 1}, name="node")))
            with pytest.raises(PgTasksError, match="carries its params and options"):
                await client.submit(chain(same_rules.s()), queue="other")  # type: ignore[call-overload]
        cols = "queue, max_retries, timeout, backoff_base, concurrency_key, concurrency_limit"
        got = [
            tuple(await conn.fetchrow(f"SELECT {cols} FROM pgtasks.tasks WHERE id = $1", i))
            for i in (alone, wf.nodes["node"])
        ]
        assert got[0] == got[1] == (
            "rules", 4, timedelta(seconds=30), timedelta(seconds=7), "c-1", 2,
        )  # fmt: skip
    finally:
        registry.specs.pop("same_rules", None)


async def test_depends_on_with_a_unique_key_is_refused_not_dropped(dsn, conn):
    async with Client(dsn) as client:
        parent = await client.submit("noop")
        with pytest.raises(PgTasksError, match="do not combine with depends_on"):
            await client.submit("noop", unique_key="u", depends_on=[parent])
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.tasks") == 1
