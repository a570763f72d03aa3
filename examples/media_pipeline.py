"""A long-running task in three stages: fetch, transcribe, store.

    .venv/bin/python examples/media_pipeline.py            # submit one, run a worker, watch it
    .venv/bin/python examples/media_pipeline.py --fail-once --slow 3

Or with separate processes:

    pgtasks worker --app examples/media_pipeline.py
    pgtasks submit media_pipeline --params '{"source": "https://example.com/talk.mp4"}'
    pgtasks watch ID          # live progress bar, message and log lines, then the result
    pgtasks logs ID           # the whole log, with the attempt of every line

Each stage is a step: its result is committed before the next stage begins, so a worker
crash, a retry or a graceful hand-back resumes at the first unfinished stage and never
repeats a finished one. The work is simulated (sleeps), so it runs anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel

from pgtasks import TaskContext, task_register

log = logging.getLogger("media_pipeline")

STAGES = ("fetch", "transcribe", "store")

#: Called at the start of each stage's work with (ctx, stage name). The tests use it to
#: count stage runs in a table and to hold a stage while they kill the worker.
StageHook = Callable[[TaskContext, str], Awaitable[None]]


class PipelineParams(BaseModel):
    source: str = "https://media.example.com/talks/pgtasks.mp4"
    seconds_per_stage: float = 1.0
    chunks: int = 20  # progress updates per stage
    slow_stage2: float = 0.0  # extra seconds in transcribe
    fail_stage3_once: bool = False  # store fails on the task's first try, then succeeds


class StoreUnavailable(ConnectionError):
    """The simulated object store refused the upload (fail_stage3_once)."""


async def _work(
    ctx: TaskContext, params: PipelineParams, stage: int, label: str, seconds: float
) -> None:
    """Simulated work, reporting overall progress (all stages) as it goes."""
    chunks = max(params.chunks, 1)
    total = len(STAGES) * chunks
    for i in range(1, chunks + 1):
        await asyncio.sleep(seconds / chunks)
        await ctx.progress(stage * chunks + i, total, f"{label} {i}/{chunks}")


async def fetch(
    ctx: TaskContext, params: PipelineParams, hook: StageHook | None = None
) -> dict[str, Any]:
    if hook:
        await hook(ctx, "fetch")
    log.info("fetch: downloading %s", params.source)
    await _work(ctx, params, 0, "fetching", params.seconds_per_stage)
    digest = hashlib.sha256(params.source.encode()).hexdigest()[:12]
    size = 1_000_000 + int(digest[:4], 16)
    log.info("fetch: %d bytes saved as %s.mp4", size, digest)
    return {"file": f"/tmp/media/{digest}.mp4", "bytes": size, "attempt": ctx.attempt}


async def transcribe(
    ctx: TaskContext,
    params: PipelineParams,
    fetched: dict[str, Any],
    hook: StageHook | None = None,
) -> dict[str, Any]:
    if hook:
        await hook(ctx, "transcribe")
    log.info("transcribe: %s", fetched["file"])
    await _work(ctx, params, 1, "transcribing", params.seconds_per_stage + params.slow_stage2)
    words = fetched["bytes"] // 997
    log.info("transcribe: %d words", words)
    return {"words": words, "language": "en", "attempt": ctx.attempt}


async def store(
    ctx: TaskContext,
    params: PipelineParams,
    fetched: dict[str, Any],
    transcript: dict[str, Any],
    hook: StageHook | None = None,
) -> dict[str, Any]:
    if hook:
        await hook(ctx, "store")
    log.info("store: uploading transcript (%d words)", transcript["words"])
    await _work(ctx, params, 2, "storing", params.seconds_per_stage)
    if params.fail_stage3_once and ctx.retry_count == 0:
        log.error("store: object store unavailable; the task will be retried")
        raise StoreUnavailable("object store unavailable (fail_stage3_once)")
    url = f"s3://transcripts/{fetched['file'].rsplit('/', 1)[-1].replace('.mp4', '.txt')}"
    log.info("store: saved %s", url)
    return {"url": url, "attempt": ctx.attempt}


async def run_pipeline(
    ctx: TaskContext, params: PipelineParams, hook: StageHook | None = None
) -> dict[str, Any]:
    """The three stages as steps. Code outside the steps runs again on every attempt."""
    await ctx.log("INFO", f"pipeline for {params.source}, attempt {ctx.attempt}")
    fetched: dict[str, Any] = await ctx.step("fetch", fetch, ctx, params, hook)
    transcript: dict[str, Any] = await ctx.step(
        "transcribe", transcribe, ctx, params, fetched, hook
    )
    stored: dict[str, Any] = await ctx.step("store", store, ctx, params, fetched, transcript, hook)
    return {
        "source": params.source,
        "bytes": fetched["bytes"],
        "words": transcript["words"],
        "url": stored["url"],
        # Which attempt ran each stage: a resumed task shows the earlier attempts here.
        "attempts": {
            "fetch": fetched["attempt"],
            "transcribe": transcript["attempt"],
            "store": stored["attempt"],
        },
    }


@task_register("media_pipeline", max_retries=3, backoff_base=0.5)
async def media_pipeline(ctx: TaskContext, params: PipelineParams) -> dict[str, Any]:
    return await run_pipeline(ctx, params)


async def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from pgtasks import Client, Worker
    from pgtasks.cli import watch_progress
    from pgtasks.config import resolve_url

    console = Console()
    console.print("[bold]media pipeline[/]: connecting to the database…")
    url = await resolve_url()
    async with Client(url) as client:
        params = PipelineParams(
            source=args.source,
            seconds_per_stage=args.seconds,
            slow_stage2=args.slow,
            fail_stage3_once=args.fail_once,
        )
        task_id = await client.submit(media_pipeline, params)
        console.print(f"submitted task {task_id}; in another shell: pgtasks watch {task_id}")
        worker = Worker(url, concurrency=2, poll_interval=0.2, shutdown_grace=5)
        running = asyncio.create_task(worker.run())
        try:
            info = await watch_progress(client, task_id)
        finally:
            worker.stop()
            await running
        if info.status != "DONE":
            console.print(f"[red]{info.status}[/]: {info.error}")
            return 1
        console.print_json(data=info.result)
        return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default=PipelineParams().source)
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per stage")
    parser.add_argument("--slow", type=float, default=0.0, help="extra seconds in stage 2")
    parser.add_argument("--fail-once", action="store_true", help="stage 3 fails once")
    raise SystemExit(asyncio.run(main(parser.parse_args())))
