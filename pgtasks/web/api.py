"""The HTTP API as a FastAPI router: every endpoint is one Client call, and the Client is one
SQL call. The API holds no logic of its own; the database decides and says why."""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at
# runtime, and they name `C`, local to router().

import asyncio
import hmac
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pgtasks.client import (
    STATUSES,
    ActiveTask,
    Client,
    SubmitResult,
    TaskDetail,
    TaskEvent,
    TaskLog,
    TaskPage,
)
from pgtasks.fastapi import get_client
from pgtasks.web.errors import ApiError, ErrorResponse, ErrorRoute
from pgtasks.web.settings import WebSettings
from pgtasks.web.sse import task_events

TaskId = Annotated[int, Path(ge=1, le=2**63 - 1, description="Task id")]

#: A status label, checked by pydantic and listed in the OpenAPI schema. Built at run time
#: from the one STATUSES tuple, which a static Literal cannot name, hence the ignore.
Status = Literal[STATUSES]  # type: ignore[valid-type]


class SubmitRequest(BaseModel):
    """What POST /tasks takes. Omitted options are decided by the database: the type's
    registered policy, else the deployment's settings."""

    model_config = ConfigDict(extra="forbid")

    task_type: str = Field(min_length=1, max_length=255)
    params: dict[str, Any] = Field(default_factory=dict)
    queue: str | None = Field(default=None, min_length=1, max_length=255)
    priority: int | None = Field(default=None, ge=-(2**31), le=2**31 - 1)
    run_at: datetime | None = None
    delay_s: float | None = Field(default=None, ge=0, le=100 * 365 * 86400)
    max_retries: int | None = Field(default=None, ge=0)
    timeout_s: float | None = Field(default=None, gt=0)
    #: While a task with this key is active, a submit returns that task (created: false).
    unique_key: str | None = None
    #: Task ids this one waits for; it is cancelled if one of them fails or is cancelled.
    depends_on: list[int] | None = None

    @model_validator(mode="after")
    def _one_time(self) -> "SubmitRequest":
        if self.run_at is not None and self.delay_s is not None:
            raise ValueError("pass run_at or delay_s, not both")
        return self


class Submitted(BaseModel):
    id: int
    created: bool = True


class Cancelled(BaseModel):
    id: int
    previous_status: str


class Retried(BaseModel):
    id: int
    status: Literal["PENDING"] = "PENDING"


class QueueInfo(BaseModel):
    """One row of pgtasks.queue_stats; ages in seconds."""

    model_config = ConfigDict(ser_json_timedelta="float")

    queue: str
    pending: int
    waiting: int
    running: int
    done: int
    failed: int
    cancelled: int
    ready: int
    oldest_ready_age: timedelta | None = None
    done_last_minute: int
    #: WAITING: tasks whose parents have not all finished (sql/0016; `waiting` is COMMIT).
    waiting_on_parents: int


class QueueState(BaseModel):
    queue: str
    paused: bool


class WorkerInfo(BaseModel):
    """One row of pgtasks.workers; `seen_ago` in seconds."""

    model_config = ConfigDict(ser_json_timedelta="float")

    worker_id: str
    host: str
    pid: int
    queues: list[str] | None = None
    concurrency: int
    started_at: datetime
    last_seen: datetime
    alive: bool
    running: int
    seen_ago: timedelta


class BulkFilter(BaseModel):
    """Which tasks a bulk action takes when no ids are given (all that match, up to `limit`)."""

    model_config = ConfigDict(extra="forbid")

    status: Status | None = None
    queue: str | None = None
    task_type: str | None = None
    #: The first line of the error (as the dashboard's failed groups show it); retry only.
    error: str | None = None


class BulkRequest(BaseModel):
    """POST /tasks/retry and /tasks/cancel: `ids`, or a `filter`, or both (ids that match)."""

    model_config = ConfigDict(extra="forbid")

    ids: list[Annotated[int, Field(ge=1)]] | None = Field(default=None, max_length=10_000)
    filter: BulkFilter | None = None
    limit: int = Field(default=1000, ge=1, le=10_000)

    @model_validator(mode="after")
    def _something(self) -> "BulkRequest":
        if self.ids is None and (
            self.filter is None or not self.filter.model_dump(exclude_none=True)
        ):
            raise ValueError("pass ids or a filter with at least one field")
        return self


class BulkDone(BaseModel):
    count: int
    ids: list[int]


class QueueLimits(BaseModel):
    """PUT /queues/{queue}/settings: every limit at once; null (or left out) is no limit."""

    model_config = ConfigDict(extra="forbid")

    max_running: int | None = Field(default=None, ge=1)
    rate_limit: int | None = Field(default=None, ge=1)
    rate_period_s: float | None = Field(default=None, gt=0)


class ScheduleState(BaseModel):
    name: str
    paused: bool | None = None
    task_id: int | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (401, 404, 409, 422, 503)
}


def _authorizer(settings: WebSettings, *, write: bool) -> Any:
    token = settings.api_token.get_secret_value() if settings.api_token else None
    open_reads = settings.api_open_reads

    def check(request: Request) -> None:
        if token is None or (not write and open_reads):
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), token):
            raise ApiError(
                401,
                "unauthorized",
                "this endpoint needs `Authorization: Bearer <token>`",
                "The token is the server's PGTASKS_API_TOKEN.",
            )

    return Depends(check)


def router(client: Client | None = None, *, settings: WebSettings | None = None) -> APIRouter:
    """The API. Mount it anywhere: `app.include_router(router(), prefix="/api/admin")`.

    With no `client`, each request uses the app's running one (pgtasks.fastapi.lifespan).
    """
    settings = settings or WebSettings()
    streams = asyncio.Semaphore(settings.api_max_streams)
    read = _authorizer(settings, write=False)
    write = _authorizer(settings, write=True)

    def the_client(request: Request) -> Client:
        return client if client is not None else get_client(request)

    C = Annotated[Client, Depends(the_client)]
    api = APIRouter(route_class=ErrorRoute, responses=ERRORS, tags=["pgtasks"])

    @api.get("/tasks", dependencies=[read])
    async def list_tasks(
        c: C,
        status: Annotated[Status | None, Query()] = None,
        queue: str | None = None,
        task_type: str | None = None,
        page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
        page_size: Annotated[int, Query(ge=1, le=500)] = 50,
        order: Literal["newest", "oldest"] = "newest",
        unique_key: Annotated[str | None, Query(min_length=1, max_length=255)] = None,
    ) -> TaskPage:
        """Tasks, newest first (`order=oldest` for the other way), with the total.
        `unique_key`: only the tasks submitted with that key (with `task_type`, of that
        type), so the first item is the newest task of the key."""
        return await c.page(
            status=status,
            queue=queue,
            task_type=task_type,
            page=page,
            page_size=page_size,
            oldest_first=order == "oldest",
            unique_key=unique_key,
        )

    @api.get("/tasks/{task_id}", dependencies=[read])
    async def get_task(c: C, task_id: TaskId) -> TaskDetail:
        """The task with params, result, every attempt's error and its step names."""
        return await c.detail(task_id)

    @api.post("/tasks", status_code=201, dependencies=[write])
    async def submit_task(c: C, body: SubmitRequest, response: Response) -> Submitted:
        """Submit a task; 201 with its id, or 200 with `created: false` when its unique key
        matched an active task (whose id it returns). Nothing is written when refused."""
        task_id = await c.submit(
            body.task_type,
            body.params,
            queue=body.queue,
            priority=body.priority,
            run_at=body.run_at,
            delay=body.delay_s,
            max_retries=body.max_retries,
            timeout=body.timeout_s,
            unique_key=body.unique_key,
            depends_on=body.depends_on,
        )
        assert isinstance(task_id, SubmitResult)  # a type name was given, not a workflow
        response.status_code = 201 if task_id.created else 200
        response.headers["Location"] = f"tasks/{int(task_id)}"
        return Submitted(id=int(task_id), created=task_id.created)

    @api.post("/tasks/{task_id}/cancel", dependencies=[write])
    async def cancel_task(c: C, task_id: TaskId) -> Cancelled:
        """Cancel; 409 (PT004) when it has already finished."""
        return Cancelled(id=task_id, previous_status=await c.cancel(task_id))

    @api.post("/tasks/{task_id}/retry", dependencies=[write])
    async def retry_task(c: C, task_id: TaskId) -> Retried:
        """Put a FAILED or CANCELLED task back to PENDING; 409 (PT001) from any other state."""
        await c.retry(task_id)
        return Retried(id=task_id)

    @api.get("/tasks/{task_id}/logs", dependencies=[read])
    async def task_logs(
        c: C,
        task_id: TaskId,
        after_id: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> list[TaskLog]:
        """Log lines after `after_id`, oldest first (an unknown task has none)."""
        return await c.logs(task_id, after_id=after_id, limit=limit)

    @api.get("/tasks/{task_id}/history", dependencies=[read])
    async def task_history(c: C, task_id: TaskId) -> list[TaskEvent]:
        """Every status transition, oldest first."""
        return await c.history(task_id)

    @api.get(
        "/tasks/{task_id}/events",
        dependencies=[read],
        response_class=Response,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def events(c: C, task_id: TaskId, after_id: Annotated[int, Query(ge=0)] = 0) -> Response:
        """Server-Sent Events: `status`, `progress`, `log`, then `end` after the final status."""
        return await task_events(c, task_id, after_id=after_id, slots=streams)

    @api.get("/queues", dependencies=[read])
    async def queues(c: C) -> list[QueueInfo]:
        """Depth by status, ready count and oldest ready age, per queue."""
        return [QueueInfo.model_validate(r) for r in await c.queue_stats()]

    @api.get("/queues/settings", dependencies=[read])
    async def queue_settings(c: C) -> list[dict[str, Any]]:
        """Each queue's flow settings (paused, limits, rate) next to its live counts."""
        return await c.queues()

    @api.post("/queues/{queue}/pause", dependencies=[write])
    async def pause_queue(c: C, queue: str) -> QueueState:
        """Stop claims from a queue (its tasks stay; submits still work)."""
        await c.pause_queue(queue)
        return QueueState(queue=queue, paused=True)

    @api.post("/queues/{queue}/resume", dependencies=[write])
    async def resume_queue(c: C, queue: str) -> QueueState:
        await c.resume_queue(queue)
        return QueueState(queue=queue, paused=False)

    @api.get("/workers", dependencies=[read])
    async def workers(c: C, include_dead: bool = True) -> list[WorkerInfo]:
        """Workers, alive first, with their running counts."""
        rows = await c.workers(include_dead=include_dead)
        return [WorkerInfo.model_validate(r) for r in rows]

    @api.get("/schedules", dependencies=[read])
    async def schedules(c: C) -> list[dict[str, Any]]:
        """Every schedule with its next run and last task (pgtasks.schedules)."""
        return await c.schedules()

    # -- what the workers are running (pgtasks.active_tasks) -------------------------------

    @api.get("/workers/active", dependencies=[read])
    async def active_tasks(
        c: C,
        queue: Annotated[str | None, Query(min_length=1, max_length=255)] = None,
        worker_id: Annotated[str | None, Query(min_length=1, max_length=255)] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> list[ActiveTask]:
        """Every RUNNING task with the worker running it (id, host, pid, alive), its
        attempt, how long it has run, its progress and its lease; by worker, longest
        running first. Intervals in seconds."""
        return await c.active(queue=queue, worker_id=worker_id, limit=limit)

    # -- bulk and operator actions the dashboard uses (docs/dashboard.md) -----------------

    @api.post("/tasks/retry", dependencies=[write])
    async def retry_tasks(c: C, body: BulkRequest) -> BulkDone:
        """Retry many FAILED/CANCELLED tasks in one all-or-nothing statement (409 when one
        of them changed state meanwhile: nothing was retried, try again)."""
        f = body.filter or BulkFilter()
        ids = await c.retry_many(
            body.ids, status=f.status, queue=f.queue, task_type=f.task_type, error=f.error,
            limit=body.limit,
        )  # fmt: skip
        return BulkDone(count=len(ids), ids=ids)

    @api.post("/tasks/cancel", dependencies=[write])
    async def cancel_tasks(c: C, body: BulkRequest) -> BulkDone:
        """Cancel many WAITING/PENDING/COMMIT/RUNNING tasks in one all-or-nothing statement."""
        f = body.filter or BulkFilter()
        if f.error is not None:
            raise ApiError(422, "invalid_request", "filter.error applies to retry only")
        ids = await c.cancel_many(
            body.ids, status=f.status, queue=f.queue, task_type=f.task_type, limit=body.limit
        )
        return BulkDone(count=len(ids), ids=ids)

    @api.put("/queues/{queue}/settings", dependencies=[write])
    async def configure_queue(c: C, queue: str, body: QueueLimits) -> dict[str, Any]:
        """Replace the queue's limits (pausing is left as it is); answers its new row."""
        period = None if body.rate_period_s is None else timedelta(seconds=body.rate_period_s)
        await c.configure_queue(
            queue, max_running=body.max_running, rate_limit=body.rate_limit, rate_period=period
        )
        rows = [r for r in await c.queues() if r["queue"] == queue]
        return rows[0] if rows else {"queue": queue}

    @api.post("/schedules/{name}/pause", dependencies=[write])
    async def pause_schedule(c: C, name: str) -> ScheduleState:
        await c.pause_schedule(name)
        return ScheduleState(name=name, paused=True)

    @api.post("/schedules/{name}/resume", dependencies=[write])
    async def resume_schedule(c: C, name: str) -> ScheduleState:
        """Continue from now: ticks that passed while paused are not fired."""
        await c.resume_schedule(name)
        return ScheduleState(name=name, paused=False)

    @api.post("/schedules/{name}/trigger", dependencies=[write])
    async def trigger_schedule(c: C, name: str) -> ScheduleState:
        """Enqueue one task of the schedule now; answers its id."""
        return ScheduleState(name=name, task_id=await c.trigger_schedule(name))

    @api.get("/workflows/{workflow_id}", dependencies=[read])
    async def workflow(c: C, workflow_id: int) -> dict[str, Any]:
        """The workflow's state, counts and nodes; 404 for an unknown workflow."""
        return await c.workflow(workflow_id)

    @api.post("/workflows/{workflow_id}/cancel", dependencies=[write])
    async def cancel_workflow(c: C, workflow_id: int) -> dict[str, Any]:
        """Cancel every unfinished task of the workflow (running ones are stopped); 404
        for an unknown workflow."""
        return {"id": workflow_id, "cancelled": await c.cancel_workflow(workflow_id)}

    return api
