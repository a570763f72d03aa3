"""Task types for tests/test_long_running.py: multi-step, sleeping, progress and log tasks.

Stage and body runs are counted in tables of the test database (LONG_DDL), so a test can
prove from the database alone how often each piece of code ran and in which attempt.
Loaded in-process by the tests and as `--app tests/apps/long.py` by worker subprocesses.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pgtasks import PermanentError, task_register
from pgtasks.context import TaskContext

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

import media_pipeline  # the example, shared with the demo (examples/ is on sys.path)

LONG_DDL = """
CREATE TABLE IF NOT EXISTS long_stage_runs (
    task_id bigint, stage text, attempt int, pid int, at timestamptz DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS long_runs (
    task_id bigint, label text, attempt int, at timestamptz DEFAULT clock_timestamp());
"""

log = logging.getLogger("tests.long")
# Logger levels still decide what is emitted at all; under pytest the root logger is
# configured (WARNING), so the loggers whose INFO/DEBUG lines the tests expect say so.
log.setLevel(logging.DEBUG)
logging.getLogger("media_pipeline").setLevel(logging.INFO)

#: Opened by in-process tests to let a waiting task finish (keyed by a name in params).
GATES: dict[str, threading.Event] = {}


def gate(name: str) -> threading.Event:
    return GATES.setdefault(name, threading.Event())


async def mark(ctx: TaskContext, label: str) -> None:
    await ctx.pool.execute(
        "INSERT INTO long_runs (task_id, label, attempt) VALUES ($1, $2, $3)",
        ctx.task_id, label, ctx.attempt,
    )  # fmt: skip


# -- the example pipeline, with every stage run counted ----------------------------------


async def count_stage(ctx: TaskContext, stage: str) -> None:
    """One row per stage run, with the attempt and the worker process that ran it."""
    await ctx.pool.execute(
        "INSERT INTO long_stage_runs (task_id, stage, attempt, pid) VALUES ($1, $2, $3, $4)",
        ctx.task_id, stage, ctx.attempt, os.getpid(),
    )  # fmt: skip


async def count_and_hold(ctx: TaskContext, stage: str) -> None:
    """Counts; holds stage 2 of the first attempt (until the test kills the worker)."""
    await count_stage(ctx, stage)
    if stage == "transcribe" and ctx.attempt == 1:
        deadline = time.monotonic() + 120  # only bounds a broken test
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)


@task_register("counted_pipeline", max_retries=3, backoff_base=0.2)
async def counted_pipeline(
    ctx: TaskContext, params: media_pipeline.PipelineParams
) -> dict[str, Any]:
    return await media_pipeline.run_pipeline(ctx, params, hook=count_stage)


@task_register("held_pipeline", max_retries=3, backoff_base=0.2)
async def held_pipeline(ctx: TaskContext, params: media_pipeline.PipelineParams) -> dict[str, Any]:
    return await media_pipeline.run_pipeline(ctx, params, hook=count_and_hold)


# -- sleeping ----------------------------------------------------------------------------


@task_register("sleeper")
async def sleeper(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    await mark(ctx, "body")
    before = await ctx.step("before", mark_step, ctx, "before")
    await ctx.sleep(params["seconds"])
    after = await ctx.step("after", mark_step, ctx, "after")
    return {"before": before, "after": after}


async def mark_step(ctx: TaskContext, label: str) -> int:
    await mark(ctx, label)
    return ctx.attempt


@task_register("sync_sleeper")
def sync_sleeper(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    before = ctx.step("before", lambda: ctx.attempt)
    ctx.sleep(params["seconds"])
    return {"before": before, "after_attempt": ctx.attempt}


@task_register("quick")
async def quick(ctx: TaskContext, params: dict[str, Any]) -> str:
    await mark(ctx, "quick")
    return "quick"


# -- progress ----------------------------------------------------------------------------


@task_register("progress_storm")
async def progress_storm(ctx: TaskContext, params: dict[str, Any]) -> int:
    n, total = params["n"], params["total"]
    for i in range(1, n + 1):
        await ctx.progress(i, total, f"item {i}")
        if i % 1000 == 0:
            await asyncio.sleep(0.02)  # spread the calls over a few seconds
    if "gate" in params:
        while not gate(params["gate"]).is_set():
            await asyncio.sleep(0.02)
    return n


@task_register("sync_progress_storm")
def sync_progress_storm(ctx: Any, params: dict[str, Any]) -> int:
    n, total = params["n"], params["total"]
    for i in range(1, n + 1):
        ctx.progress(i, total, f"item {i}")
        if i % 1000 == 0:
            time.sleep(0.02)
    if "gate" in params:
        gate(params["gate"]).wait(120)
    return n


# -- logs --------------------------------------------------------------------------------


def log_from_thread() -> str:
    log.warning("from a step thread")
    return "threaded"


async def async_step() -> str:
    log.info("from an async step")
    return "async"


@task_register("chatty", max_retries=1, backoff_base=0.1)
async def chatty(ctx: TaskContext, params: dict[str, Any]) -> str:
    await ctx.log("INFO", f"ctx one, attempt {ctx.attempt}")
    log.info("logging two %s", ctx.attempt)
    await ctx.step("threaded", log_from_thread)
    await ctx.step("async", async_step)
    await ctx.log(logging.DEBUG, "ctx three")
    log.debug("logging four")
    logging.getLogger("pgtasks.fake").warning("framework records stay out of task logs")
    if ctx.attempt == 1:
        log.error("failing attempt %s", ctx.attempt)
        raise RuntimeError("first attempt fails")
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.exception("caught")
    return "ok"


@task_register("sync_chatty", max_retries=1, backoff_base=0.1)
def sync_chatty(ctx: Any, params: dict[str, Any]) -> str:
    ctx.log("INFO", f"ctx one, attempt {ctx.attempt}")
    log.info("logging two %s", ctx.attempt)
    ctx.step("threaded", log_from_thread)
    ctx.log(logging.DEBUG, "ctx three")
    log.debug("logging four")
    if ctx.attempt == 1:
        log.error("failing attempt %s", ctx.attempt)
        raise RuntimeError("first attempt fails")
    return "ok"


@task_register("log_flood")
async def log_flood(ctx: TaskContext, params: dict[str, Any]) -> int:
    for i in range(params["n"]):
        log.info("line %d", i)
    return params["n"]


@task_register("sync_log_flood")
def sync_log_flood(ctx: Any, params: dict[str, Any]) -> int:
    for i in range(params["n"]):
        log.info("line %d", i)
        if i % 100 == 0:
            time.sleep(0.001)
    return params["n"]


# -- steps -------------------------------------------------------------------------------


@task_register("batches", max_retries=2, backoff_base=0.1)
async def batches(ctx: TaskContext, params: dict[str, Any]) -> list[int]:
    """A loop of steps named f"batch-{i}"; fails once halfway (first attempt only)."""
    out = []
    for i in range(params["n"]):
        out.append(await ctx.step(f"batch-{i}", one_batch, ctx, i))
        if ctx.attempt == 1 and i == params["fail_after"]:
            raise RuntimeError(f"crash after batch {i}")
    return out


async def one_batch(ctx: TaskContext, i: int) -> int:
    await mark(ctx, f"batch-{i}")
    return i * i


@task_register("bad_step")
async def bad_step(ctx: TaskContext, params: dict[str, Any]) -> None:
    await ctx.step("makes-a-set", lambda: {1, 2, 3})


@task_register("same_step_twice")
async def same_step_twice(ctx: TaskContext, params: dict[str, Any]) -> None:
    await ctx.step("again", lambda: 1)
    await ctx.step("again", lambda: 2)


@task_register("shapes")
async def shapes(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    """A step result that JSON reshapes: the first run must already see the stored shape."""
    value = await ctx.step("shape", lambda: {"pair": (1, 2), 7: "seven"})
    seen = f"{type(value['pair']).__name__}:{','.join(sorted({type(k).__name__ for k in value}))}"
    await mark(ctx, f"shape {seen}")
    if ctx.attempt == 1:
        raise RuntimeError("again, to read it back")
    return value


# -- results -----------------------------------------------------------------------------


@task_register("answer")
async def answer(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(params.get("delay", 0.0))
    return {"answer": 42, "echo": params.get("echo")}


@task_register("kaput", max_retries=0)
async def kaput(ctx: TaskContext, params: dict[str, Any]) -> None:
    raise PermanentError("kaput: the input cannot be processed")


@task_register("forever")
async def forever(ctx: TaskContext, params: dict[str, Any]) -> None:
    await mark(ctx, "forever")
    while True:
        await asyncio.sleep(0.05)


@task_register("odd_lines")
async def odd_lines(ctx: TaskContext, params: dict[str, Any]) -> str:
    """Lines PostgreSQL text cannot hold as they are: a NUL and a lone surrogate."""
    log.info("nul \x00 here")
    await ctx.log("INFO", "surrogate \udc80 here")
    log.info("after")
    return "ok"
