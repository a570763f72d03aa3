"""A FastAPI app that runs its own background tasks with pgtasks, end to end.

    pip install 'pgtasks[web]'
    PGTASKS_DATABASE_URL=postgresql://... uvicorn examples.fastapi_app:app
    # or: python examples/fastapi_app.py (no PGTASKS_DATABASE_URL: the embedded server)

- POST /reports             creates a task and returns its id at once;
- the worker inside this process runs it, reporting progress;
- GET  /reports/{id}        polls its status;
- GET  /reports/{id}/events streams status, progress and log lines (Server-Sent Events);
- POST /reports/{id}/cancel cancels it;
- /api/admin/...            the whole pgtasks API (list, logs, history, queues, workers).

On SIGTERM uvicorn shuts the app down: the worker stops claiming, lets running reports finish
within REPORT_GRACE seconds and hands the rest back, so another instance resumes them from
their last finished step.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends, FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from pgtasks import Client, TaskContext, TaskInfo, task_register
from pgtasks.fastapi import get_client, lifespan
from pgtasks.web import router
from pgtasks.web.sse import task_events


class Settings(BaseSettings):
    """From the environment: PGTASKS_DATABASE_URL, REPORT_CONCURRENCY, REPORT_GRACE."""

    model_config = SettingsConfigDict(extra="ignore")

    pgtasks_database_url: str | None = None
    report_concurrency: int = 4
    report_grace: float = 10.0


class ReportParams(BaseModel):
    sections: int = Field(default=5, ge=1, le=1000)
    seconds_per_section: float = Field(default=1.0, ge=0, le=3600)


@task_register("build_report", timeout=3600)
async def build_report(ctx: TaskContext, params: ReportParams) -> dict[str, int]:
    """Each section is a step: a resumed attempt (after a hand-back) skips the done ones."""

    async def section(n: int) -> int:
        await asyncio.sleep(params.seconds_per_section)
        return n * n

    total = 0
    for n in range(1, params.sections + 1):
        done: int = await ctx.step(f"section-{n}", section, n)
        total += done
        await ctx.log("INFO", f"section {n} done")
        await ctx.progress(n, params.sections, f"section {n} of {params.sections}")
    return {"sections": params.sections, "total": total}


settings = Settings()
app = FastAPI(
    title="reports",
    lifespan=lifespan(
        settings.pgtasks_database_url,
        worker=True,
        concurrency=settings.report_concurrency,
        shutdown_grace=settings.report_grace,
        poll_interval=0.5,
    ),
)
app.include_router(router(), prefix="/api/admin")
ClientDep = Annotated[Client, Depends(get_client)]


class Created(BaseModel):
    task_id: int


@app.post("/reports", status_code=201)
async def create_report(client: ClientDep, params: ReportParams) -> Created:
    return Created(task_id=await client.submit(build_report, params))


@app.get("/reports/{task_id}")
async def report_status(client: ClientDep, task_id: int) -> TaskInfo:
    return await client.get(task_id)


@app.get("/reports/{task_id}/events")
async def report_events(client: ClientDep, task_id: int) -> StreamingResponse:
    return await task_events(client, task_id)


@app.post("/reports/{task_id}/cancel")
async def cancel_report(client: ClientDep, task_id: int) -> dict[str, str]:
    return {"previous_status": await client.cancel(task_id)}


if __name__ == "__main__":
    import os

    import uvicorn

    uvicorn.run(
        app,
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "8000")),
        timeout_graceful_shutdown=5,
    )
