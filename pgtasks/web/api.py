"""The HTTP API as a FastAPI router: every endpoint is one Client call, and the Client is one
SQL call. The API holds no logic of its own; the database decides and says why."""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at
# runtime, and they name `C`, local to router().

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response, Security
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic.config import JsonDict
from starlette.routing import Match
from starlette.types import Scope

from pgtasks.client import (
    STATUSES,
    ActiveTask,
    Client,
    ReplicaLag,
    SubmitResult,
    TaskDetail,
    TaskEvent,
    TaskInfo,
    TaskLog,
    TaskPage,
)
from pgtasks.fastapi import ClientSources
from pgtasks.web.errors import ApiError, ErrorResponse, ErrorRoute
from pgtasks.web.metrics import CONTENT_TYPE as METRICS_TYPE
from pgtasks.web.metrics import render
from pgtasks.web.session import same
from pgtasks.web.settings import WebSettings
from pgtasks.web.sse import stream_slots, task_events

# The bounds of the types behind each input (bigint ids, integer counts): a value past them
# is refused here with the field's name instead of failing in asyncpg as a 500. The
# database still decides the rest (max_retries <= 1000, blank names, sizes) and says so
# with its own code.
INT64 = 2**63 - 1
INT32 = 2**31 - 1
#: The longest duration (delay, timeout, rate period) the API takes, in seconds: 100 years.
MAX_SECONDS = 100 * 365 * 86400.0
#: The shortest positive duration: timedelta counts microseconds, so less rounds to zero.
MIN_SECONDS = 1e-6
#: No NUL character: PostgreSQL text cannot hold one.
NO_NUL = "^[^\\x00]*$"

TaskId = Annotated[int, Path(ge=1, le=INT64, description="Task id")]
WorkflowId = Annotated[int, Path(ge=1, le=INT64, description="Workflow id")]


def _number(value: Any) -> Any:
    """A JSON number, as the schema says: pydantic's lax mode also takes true for 1, "5" for
    5 and, for a time, 0 for 1970."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("Input should be a JSON number")
    return value


def _string(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("Input should be a JSON string")
    return value


# JSON numbers in bounds (an integer may be 5 or 5.0, as JSON Schema counts them; not true,
# not "5"). The bounds come first so the schema shows them as minimum and maximum.
Number = BeforeValidator(_number)
Id = Annotated[int, Field(ge=1, le=INT64), Number]
Int32 = Annotated[int, Field(ge=-(2**31), le=INT32), Number]
Retries = Annotated[int, Field(ge=0, le=INT32), Number]
Count = Annotated[int, Field(ge=1, le=INT32), Number]
Limit = Annotated[int, Field(ge=1, le=10_000), Number]
#: A name (task type, queue, key): 1 to 255 characters without NUL; the database also
#: refuses blank ones and counts the 255 in bytes.
Name = Annotated[str, Field(min_length=1, max_length=255, pattern=NO_NUL)]
#: A filter value in a query string: at most 255 characters, without NUL.
QueryText = Annotated[str | None, Query(max_length=255, pattern=NO_NUL)]
QueryName = Annotated[str | None, Query(min_length=1, max_length=255, pattern=NO_NUL)]
#: A name in a path. `{queue:path}` in the route: a name may hold "/" (sent as %2F), and the
#: route still matches it whole instead of another route.
PathName = Annotated[str, Path(min_length=1, max_length=255, pattern=NO_NUL)]
Delay = Annotated[float, Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False), Number]
Duration = Annotated[float, Field(ge=MIN_SECONDS, le=MAX_SECONDS, allow_inf_nan=False), Number]

#: A status label, checked by pydantic and listed in the OpenAPI schema. Built at run time
#: from the one STATUSES tuple, which a static Literal cannot name, hence the ignore.
Status = Literal[STATUSES]  # type: ignore[valid-type]


def _not_both(a: str, b: str) -> dict[str, Any]:
    """JSON Schema for "`a` and `b` are not both given and not null"."""
    not_null = {"not": {"type": "null"}}
    return {"not": {"required": [a, b], "properties": {a: not_null, b: not_null}}}


class SubmitRequest(BaseModel):
    """What POST /tasks takes. Omitted options are decided by the database: the type's
    registered policy, else the deployment's settings."""

    model_config = ConfigDict(
        extra="forbid",
        # What the schema cannot say field by field: run_at and delay_s are not both set
        # (_one_time), nor unique_key or unique_for_s with depends_on, nor idempotency_key
        # with unique_key or depends_on (Client.submit refuses those together).
        json_schema_extra={
            "allOf": [
                _not_both("run_at", "delay_s"),
                _not_both("unique_key", "depends_on"),
                _not_both("unique_for_s", "depends_on"),
                _not_both("idempotency_key", "unique_key"),
                _not_both("idempotency_key", "depends_on"),
            ]
        },
    )

    task_type: Name
    params: dict[str, Any] = Field(default_factory=dict)
    queue: Name | None = None
    priority: Int32 | None = None
    #: With its UTC offset (RFC 3339): a time without one names no instant.
    run_at: Annotated[AwareDatetime, BeforeValidator(_string)] | None = None
    delay_s: Delay | None = None
    max_retries: Retries | None = None
    timeout_s: Duration | None = None
    #: While a task with this key is active, a submit returns that task (created: false).
    unique_key: Name | None = None
    #: Seconds the key stays taken from the submit on, even after its task finished (a
    #: submit within them returns that task, created: false). Needs a unique_key or an
    #: idempotency_key (else 422 PT303), as Client.submit(unique_for=...) takes it.
    unique_for_s: Duration | None = None
    #: Makes the submit safe to send again (after a timeout or a lost answer): it is the
    #: task's unique_key, as Client.submit(idempotency_key=...) takes it.
    idempotency_key: Name | None = None
    #: Task ids this one waits for; it is cancelled if one of them fails or is cancelled.
    depends_on: list[Id] | None = Field(default=None, max_length=10_000)

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


def _any_of(*fields: str) -> dict[str, Any]:
    """JSON Schema for "at least one of `fields` is given and not null"."""
    return {
        "anyOf": [{"required": [f], "properties": {f: {"not": {"type": "null"}}}} for f in fields]
    }


class CancelFilter(BaseModel):
    """Which tasks a bulk cancel takes (all that match, up to `limit`): at least one field."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra=_any_of("status", "queue", "task_type")
    )

    status: Status | None = None
    queue: Name | None = None
    task_type: Name | None = None

    @model_validator(mode="after")
    def _something(self) -> "CancelFilter":
        if not self.model_dump(exclude_none=True):
            raise ValueError("a filter needs at least one field")
        return self


class RetryFilter(CancelFilter):
    """Which tasks a bulk retry takes; `error` too."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=_any_of("status", "queue", "task_type", "error", "fingerprint"),
    )

    #: The first line of the error, exactly.
    error: Annotated[str, Field(min_length=1, max_length=10_000, pattern=NO_NUL)] | None = None
    #: The error's fingerprint (pgtasks.error_fingerprint), as the dashboard's failed
    #: groups have it: every failure of one cause, whatever ids or addresses it names.
    fingerprint: Annotated[str, Field(min_length=1, max_length=10_000, pattern=NO_NUL)] | None = (
        None
    )


#: ids, or a filter, or both (the ids that match).
_IDS_OR_FILTER = _any_of("ids", "filter")


class CancelRequest(BaseModel):
    """POST /tasks/cancel: `ids`, or a `filter`, or both (the ids that match)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_IDS_OR_FILTER)

    ids: list[Id] | None = Field(default=None, max_length=10_000)
    filter: CancelFilter | None = None
    limit: Limit = 1000

    @model_validator(mode="after")
    def _something(self) -> "CancelRequest":
        if self.ids is None and self.filter is None:
            raise ValueError("pass ids or a filter")
        return self


class RetryRequest(CancelRequest):
    """POST /tasks/retry: `ids`, or a `filter`, or both (the ids that match)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_IDS_OR_FILTER)

    filter: RetryFilter | None = None


class BulkDone(BaseModel):
    count: int
    ids: list[int]


class EventSent(BaseModel):
    id: int
    name: str
    delivered: bool


class QueueLimits(BaseModel):
    """PUT /queues/{queue}/settings: every limit at once; null (or left out) is no limit."""

    model_config = ConfigDict(extra="forbid")

    max_running: Count | None = None
    rate_limit: Count | None = None
    rate_period_s: Duration | None = None


class ScheduleState(BaseModel):
    name: str
    paused: bool | None = None
    task_id: int | None = None


#: Exactly one of cron and every_s (the database says so too, PT404).
_CRON_OR_EVERY: JsonDict = {"allOf": [_not_both("cron", "every_s"), _any_of("cron", "every_s")]}


class ScheduleSpec(BaseModel):
    """PUT /schedules/{name}: the whole definition, as `pgtasks schedules add` takes it
    (pgtasks.create_schedule). Exactly one of `cron` and `every_s`; durations in seconds.
    The database checks the rest (cron syntax, time zone, every >= its floor, catch_up and
    misfire_grace ranges) and refuses with its PT4xx code; nothing is written then."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_CRON_OR_EVERY)

    task_type: Name
    #: Five fields, in `timezone`, e.g. "0 6 * * *".
    cron: Annotated[str, Field(min_length=1, max_length=255, pattern=NO_NUL)] | None = None
    #: A fixed interval in seconds; ticks are multiples of it since the Unix epoch.
    every_s: Duration | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    #: None: the type's registered queue, else the deployment's default.
    queue: Name | None = None
    priority: Int32 | None = None
    #: An IANA time zone name (pg_timezone_names), for cron.
    timezone: Name = "UTC"
    overlap: Literal["allow", "skip", "cancel_previous"] = "allow"
    #: Run the ticks missed in this many seconds back; 0: only the latest.
    catch_up_s: Delay = 0
    #: A tick found later than this many seconds is skipped and counted; None: never.
    misfire_grace_s: Duration | None = None


class NewSchedule(ScheduleSpec):
    """POST /schedules: a definition with its name."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_CRON_OR_EVERY)

    name: Name


# Durations as seconds, like every other duration of the API: pydantic writes a timedelta
# as ISO 8601 ("PT0.0029S"), which the `duration` format it documents (RFC 3339, whole
# seconds) does not allow.
class Task(TaskInfo):
    """A task's state; `elapsed` in seconds. No `result`: a list does not read the results
    (up to settings.max_result_bytes each), and an item carrying `"result": null` would read
    as "no result" for a task that has one. `GET /tasks/{id}` has it."""

    model_config = ConfigDict(ser_json_timedelta="float")

    result: Any = Field(default=None, exclude=True)


class Tasks(TaskPage):
    """One page of tasks; `total` counts every task that matches the filters."""

    items: list[Task]  # type: ignore[assignment]


class TaskFull(TaskDetail):
    """A task with params, result, every attempt's error and its steps; `elapsed` in seconds."""

    model_config = ConfigDict(ser_json_timedelta="float")


#: The spans GET /charts draws, in seconds (the dashboard's selector).
CHART_SPANS = {"5m": 300, "1h": 3600, "24h": 86400}


class ChartBucket(BaseModel):
    """One bucket of pgtasks.task_chart: the tasks that ended in it and their times, in
    seconds. rolled false: maintenance has not rolled it up yet, and its counts are null."""

    bucket: datetime
    width_s: float
    rolled: bool
    done: int | None
    failed: int | None
    cancelled: int | None
    #: Run: finished_at - started_at of the tasks that ended DONE or FAILED.
    run_count: int | None
    run_mean: float | None
    run_p50: float | None
    run_p95: float | None
    run_max: float | None
    #: Wait: from ready (run_at) to start, of those that ran one attempt.
    wait_count: int | None
    wait_mean: float | None
    wait_p50: float | None
    wait_p95: float | None
    wait_max: float | None
    #: The deepest sample of ready and running tasks in the bucket (null: none taken).
    ready: int | None
    running: int | None


class Chart(BaseModel):
    span: Literal["5m", "1h", "24h"]
    queue: str | None
    buckets: list[ChartBucket]


def _in_seconds(row: dict[str, Any]) -> dict[str, Any]:
    """A row with its intervals as seconds, like every other duration of the API (a
    timedelta in a plain dict would be written as ISO 8601, "PT1H")."""
    return {k: v.total_seconds() if isinstance(v, timedelta) else v for k, v in row.items()}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorResponse} for s in statuses}


#: What any route may answer: 422 (a parameter or the body is invalid), 503 (no Client, or
#: no stream slot).
ERRORS = _errors(422, 503)
#: A route with a path parameter: 404 also when the value cannot name anything (`abc`).
MISSING = _errors(404)
#: A write: the task's (or queue's) state may forbid it.
CONFLICT = _errors(409)

#: Declares the bearer token in the OpenAPI (the check itself is the route class's, which
#: runs before the body is read).
bearer = HTTPBearer(auto_error=False, scheme_name="bearer", description="PGTASKS_API_TOKEN")


def _one_segment(scope: Scope, params: dict[str, Any]) -> bool:
    """Whether each name in the path came as one segment, its "/" sent as %2F.

    A `{name:path}` parameter would also take a literal "/", so `PUT /schedules/x/pause`
    would replace a schedule named "x/pause" instead of being refused by the pause route,
    which only takes POST. Decoding turns %2F into "/", so the raw path holds exactly the
    route's own slashes when no name held a literal one. Without a raw path (it is
    optional in ASGI) the decoded match stands."""
    raw = scope.get("raw_path")
    if not isinstance(raw, bytes):
        return True
    held = sum(v.count("/") for v in params.values() if isinstance(v, str))
    return raw.count(b"/") == str(scope["path"]).count("/") - held


def _route_class(settings: WebSettings) -> type[ErrorRoute]:
    """The router's route class: each route checks the token (GET and HEAD are reads, the
    rest writes) before FastAPI reads or validates anything, so an unauthenticated request
    is a 401 whatever its body, and its body is never read."""
    token = settings.api_token.get_secret_value() if settings.api_token else None
    open_reads = settings.api_open_reads

    class ApiRoute(ErrorRoute):
        def matches(self, scope: Scope) -> tuple[Match, Scope]:
            match, child = super().matches(scope)
            if match is not Match.NONE and not _one_segment(scope, child.get("path_params", {})):
                return Match.NONE, {}
            return match, child

        def authorize(self, request: Request) -> None:
            if token is None or (open_reads and request.method in ("GET", "HEAD")):
                return
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not same(given.strip(), token):
                raise ApiError(
                    401,
                    "unauthorized",
                    "this endpoint needs `Authorization: Bearer <token>`",
                    "The token is the server's PGTASKS_API_TOKEN.",
                )

    return ApiRoute


def _declared(settings: WebSettings, *, write: bool) -> list[Any]:
    """The dependencies that declare a route's auth in the OpenAPI: bearer security and a
    401, where the token is needed."""
    if settings.api_token is None or (not write and settings.api_open_reads):
        return []
    return [Security(bearer)]


def router(
    client: Client | None = None,
    *,
    settings: WebSettings | None = None,
    metrics: bool = False,
    reader: Client | None = None,
) -> APIRouter:
    """The API. Mount it anywhere: `app.include_router(router(), prefix="/api/admin")`.

    With no `client`, each request uses the app's running one (pgtasks.fastapi.lifespan).
    The GET endpoints read through `reader`, a Client of a replica (default: the app's
    replica Client when it has one and no `client` is given, else the primary's); every
    write, and the task event stream (LISTEN and watch_task, which a hot standby cannot
    run), stays on the primary. `GET /replica` says how far behind the replica is.
    `metrics=True` adds `GET /metrics` (the Prometheus text, a read like the others: with
    a token set it needs it unless reads are open), so a mounted app exposes it at
    `<prefix>/metrics`.
    """
    settings = settings or WebSettings()
    read = _declared(settings, write=False)
    write = _declared(settings, write=True)

    sources = ClientSources(client, reader)
    the_client, the_replica, the_reader = sources.primary, sources.replica, sources.read

    C = Annotated[Client, Depends(the_client)]
    #: What only reads: the replica's Client when there is one.
    R = Annotated[Client, Depends(the_reader)]
    api = APIRouter(route_class=_route_class(settings), responses=ERRORS, tags=["pgtasks"])

    @api.get("/tasks", dependencies=read)
    async def list_tasks(
        c: R,
        status: Annotated[Status | None, Query()] = None,
        queue: QueryText = None,
        task_type: QueryText = None,
        page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
        page_size: Annotated[int, Query(ge=1, le=500)] = 50,
        order: Literal["newest", "oldest"] = "newest",
        unique_key: QueryName = None,
    ) -> Tasks:
        """Tasks, newest first (`order=oldest` for the other way), with the total.
        `unique_key`: only the tasks submitted with that key (with `task_type`, of that
        type), so the first item is the newest task of the key."""
        return await c.page(  # type: ignore[return-value]  # validated into Tasks
            status=status,
            queue=queue,
            task_type=task_type,
            page=page,
            page_size=page_size,
            oldest_first=order == "oldest",
            unique_key=unique_key,
        )

    @api.get("/tasks/{task_id:int}", dependencies=read)
    async def get_task(c: R, task_id: TaskId) -> TaskFull:
        """The task with params, result, every attempt's error and its step names."""
        return await c.detail(task_id)  # type: ignore[return-value]  # validated into TaskFull

    @api.post(
        "/tasks",
        status_code=201,
        dependencies=write,
        responses={
            200: {"model": Submitted, "description": "Its unique key matched an active task"}
        },
    )
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
            unique_for=body.unique_for_s,
            depends_on=body.depends_on,
            idempotency_key=body.idempotency_key,
        )
        assert isinstance(task_id, SubmitResult)  # a type name was given, not a workflow
        response.status_code = 201 if task_id.created else 200
        response.headers["Location"] = f"tasks/{int(task_id)}"
        return Submitted(id=int(task_id), created=task_id.created)

    @api.post("/tasks/{task_id:int}/cancel", dependencies=write)
    async def cancel_task(c: C, task_id: TaskId) -> Cancelled:
        """Cancel; 409 (PT004) when it has already finished."""
        return Cancelled(id=task_id, previous_status=await c.cancel(task_id))

    @api.post("/tasks/{task_id:int}/events/{name}", dependencies=write)
    async def send_event(
        c: C,
        task_id: TaskId,
        name: PathName,
        payload: Annotated[Any, Body()] = None,
    ) -> EventSent:
        """Deliver the event `name` to the task, the JSON body as its payload (none: null).
        A task waiting for it runs again at once; `delivered` is false when an event of
        that name was already delivered (the first is kept). 409 (PT128) for a task that
        ended, 404 for none."""
        delivered = await c.send_event(task_id, name, payload)
        return EventSent(id=task_id, name=name, delivered=delivered)

    @api.get("/tasks/{task_id:int}/inbox", dependencies=read)
    async def task_inbox(c: R, task_id: TaskId) -> list[dict[str, Any]]:
        """The events sent to the task and its waits for them, oldest first."""
        return await c.inbox(task_id)

    @api.get("/tasks/{task_id:int}/children", dependencies=read)
    async def task_children(
        c: C, task_id: TaskId, limit: Annotated[int, Query(ge=1, le=10_000)] = 1000
    ) -> list[dict[str, Any]]:
        """The children the task spawned (`ctx.spawn`), in spawn order, at most `limit`;
        an empty list for a task without children."""
        return await c.children(task_id, limit=limit)

    @api.post("/tasks/{task_id:int}/retry", dependencies=write)
    async def retry_task(c: C, task_id: TaskId) -> Retried:
        """Put a FAILED or CANCELLED task back to PENDING; 409 (PT001) from any other state."""
        await c.retry(task_id)
        return Retried(id=task_id)

    @api.get("/tasks/{task_id:int}/logs", dependencies=read)
    async def task_logs(
        c: R,
        task_id: TaskId,
        after_id: Annotated[int, Query(ge=0, le=INT64)] = 0,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> list[TaskLog]:
        """Log lines after `after_id`, oldest first (an unknown task has none)."""
        return await c.logs(task_id, after_id=after_id, limit=limit)

    @api.get("/tasks/{task_id:int}/history", dependencies=read)
    async def task_history(c: R, task_id: TaskId) -> list[TaskEvent]:
        """Every status transition, oldest first."""
        return await c.history(task_id)

    @api.get(
        "/tasks/{task_id:int}/events",
        dependencies=read,
        response_class=Response,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def events(
        c: C, task_id: TaskId, after_id: Annotated[int, Query(ge=0, le=INT64)] = 0
    ) -> Response:
        """Server-Sent Events: `status`, `progress`, `log`, then `end` after the final status."""
        slots = stream_slots(c, settings.api_max_streams)
        return await task_events(c, task_id, after_id=after_id, slots=slots)

    @api.get("/queues", dependencies=read)
    async def queues(c: R) -> list[QueueInfo]:
        """Depth by status, ready count and oldest ready age, per queue."""
        return [QueueInfo.model_validate(r) for r in await c.queue_stats()]

    @api.get("/charts", dependencies=read)
    async def charts(
        c: C, span: Literal["5m", "1h", "24h"] = "1h", queue: QueryName = None
    ) -> Chart:
        """Throughput, run time, wait time and depth over the last 5 minutes, hour or day,
        from the database's roll-up (pgtasks.task_chart), oldest bucket first: 10-second
        buckets for 5m and 1h, 5-minute ones for 24h. `queue`: that queue only."""
        rows = await c.chart(CHART_SPANS[span], queue=queue)
        return Chart(span=span, queue=queue, buckets=[ChartBucket.model_validate(r) for r in rows])

    @api.get("/queues/settings", dependencies=read)
    async def queue_settings(c: R) -> list[dict[str, Any]]:
        """Each queue's flow settings (paused, limits, rate) next to its live counts."""
        return await c.queues()

    @api.post("/queues/{queue:path}/pause", dependencies=write)
    async def pause_queue(c: C, queue: PathName) -> QueueState:
        """Stop claims from a queue (its tasks stay; submits still work)."""
        await c.pause_queue(queue)
        return QueueState(queue=queue, paused=True)

    @api.post("/queues/{queue:path}/resume", dependencies=write)
    async def resume_queue(c: C, queue: PathName) -> QueueState:
        await c.resume_queue(queue)
        return QueueState(queue=queue, paused=False)

    @api.get("/workers", dependencies=read)
    async def workers(c: R, include_dead: bool = True) -> list[WorkerInfo]:
        """Workers, alive first, with their running counts."""
        rows = await c.workers(include_dead=include_dead)
        return [WorkerInfo.model_validate(r) for r in rows]

    @api.get("/stranded", dependencies=read)
    async def stranded(c: R, limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
        """Ready tasks whose recorded code version no live worker serves
        (pgtasks.stranded_tasks): they wait for a worker that runs or accepts it."""
        return await c.stranded(limit)

    @api.get("/schedules", dependencies=read)
    async def schedules(c: R) -> list[dict[str, Any]]:
        """Every schedule with its next run and last task (pgtasks.schedules); every,
        catch_up and misfire_grace in seconds."""
        return [_in_seconds(r) for r in await c.schedules()]

    # -- what the workers are running (pgtasks.active_tasks) -------------------------------

    @api.get("/workers/active", dependencies=read)
    async def active_tasks(
        c: R,
        queue: QueryName = None,
        worker_id: QueryName = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> list[ActiveTask]:
        """Every RUNNING task with the worker running it (id, host, pid, alive), its
        attempt, how long it has run, its progress and its lease; by worker, longest
        running first. Intervals in seconds."""
        return await c.active(queue=queue, worker_id=worker_id, limit=limit)

    # -- bulk and operator actions the dashboard uses (docs/dashboard.md) -----------------

    @api.post("/tasks/retry", dependencies=write)
    async def retry_tasks(c: C, body: RetryRequest) -> BulkDone:
        """Retry many FAILED/CANCELLED tasks in one all-or-nothing statement (409 when one
        of them changed state meanwhile: nothing was retried, try again)."""
        f = body.filter or RetryFilter.model_construct()
        ids = await c.retry_many(
            body.ids, status=f.status, queue=f.queue, task_type=f.task_type, error=f.error,
            limit=body.limit, fingerprint=f.fingerprint,
        )  # fmt: skip
        return BulkDone(count=len(ids), ids=ids)

    @api.post("/tasks/cancel", dependencies=write)
    async def cancel_tasks(c: C, body: CancelRequest) -> BulkDone:
        """Cancel many WAITING/PENDING/COMMIT/RUNNING tasks in one all-or-nothing statement."""
        f = body.filter or CancelFilter.model_construct()
        ids = await c.cancel_many(
            body.ids, status=f.status, queue=f.queue, task_type=f.task_type, limit=body.limit
        )
        return BulkDone(count=len(ids), ids=ids)

    @api.put("/queues/{queue:path}/settings", dependencies=write)
    async def configure_queue(c: C, queue: PathName, body: QueueLimits) -> dict[str, Any]:
        """Replace the queue's limits (pausing is left as it is); answers its new row."""
        period = None if body.rate_period_s is None else timedelta(seconds=body.rate_period_s)
        await c.configure_queue(
            queue, max_running=body.max_running, rate_limit=body.rate_limit, rate_period=period
        )
        rows = [r for r in await c.queues() if r["queue"] == queue]
        return rows[0] if rows else {"queue": queue}

    async def save_schedule(c: Client, name: str, spec: ScheduleSpec) -> dict[str, Any]:
        def seconds(value: float | None) -> timedelta | None:
            return None if value is None else timedelta(seconds=value)

        await c.create_schedule(
            name,
            spec.task_type,
            cron=spec.cron,
            every=seconds(spec.every_s),
            params=spec.params,
            queue=spec.queue,
            priority=spec.priority,
            timezone=spec.timezone,
            overlap=spec.overlap,
            catch_up=timedelta(seconds=spec.catch_up_s),
            misfire_grace=seconds(spec.misfire_grace_s),
        )
        rows = [_in_seconds(r) for r in await c.schedules() if r["name"] == name]
        return rows[0] if rows else {"name": name}

    @api.post("/schedules", status_code=201, dependencies=write)
    async def create_schedule(c: C, body: NewSchedule, response: Response) -> dict[str, Any]:
        """Create a schedule, or replace the one of that name (as `pgtasks schedules add`
        does); 201 with its row (pgtasks.schedules). A changed timing fires from now on."""
        response.headers["Location"] = f"schedules/{quote(body.name, safe='')}"
        return await save_schedule(c, body.name, body)

    @api.put("/schedules/{name:path}", dependencies=write)
    async def put_schedule(c: C, name: PathName, body: ScheduleSpec) -> dict[str, Any]:
        """Create or replace schedule `name` with this whole definition; its row. Pausing
        is left as it is; a changed timing fires from now on (no backfill)."""
        return await save_schedule(c, name, body)

    @api.delete("/schedules/{name:path}", status_code=204, response_class=Response,
                dependencies=write)  # fmt: skip
    async def delete_schedule(c: C, name: PathName) -> Response:
        """Drop the schedule; the tasks it enqueued stay. 404 (PT407) for none."""
        await c.drop_schedule(name)
        return Response(status_code=204)

    @api.post("/schedules/{name:path}/pause", dependencies=write)
    async def pause_schedule(c: C, name: PathName) -> ScheduleState:
        await c.pause_schedule(name)
        return ScheduleState(name=name, paused=True)

    @api.post("/schedules/{name:path}/resume", dependencies=write)
    async def resume_schedule(c: C, name: PathName) -> ScheduleState:
        """Continue from now: ticks that passed while paused are not fired."""
        await c.resume_schedule(name)
        return ScheduleState(name=name, paused=False)

    @api.post("/schedules/{name:path}/trigger", dependencies=write)
    async def trigger_schedule(c: C, name: PathName) -> ScheduleState:
        """Enqueue one task of the schedule now; answers its id."""
        return ScheduleState(name=name, task_id=await c.trigger_schedule(name))

    @api.get("/replica", dependencies=read)
    async def replica(c: R) -> ReplicaLag:
        """How stale the GET endpoints' answers are: the lag of the replica they read
        (pgtasks.replica_lag; `stale` once it is above PGTASKS_READ_LAG_THRESHOLD
        seconds, or unknown). Reading from the primary: in_recovery false, lag 0."""
        return await c.replica_lag(settings.read_lag_threshold)

    @api.get("/workflows/{workflow_id:int}", dependencies=read)
    async def workflow(c: R, workflow_id: WorkflowId) -> dict[str, Any]:
        """The workflow's state, counts and nodes; 404 for an unknown workflow."""
        return await c.workflow(workflow_id)

    @api.post("/workflows/{workflow_id:int}/cancel", dependencies=write)
    async def cancel_workflow(c: C, workflow_id: WorkflowId) -> dict[str, Any]:
        """Cancel every unfinished task of the workflow (running ones are stopped); 404
        for an unknown workflow."""
        return {"id": workflow_id, "cancelled": await c.cancel_workflow(workflow_id)}

    if metrics:

        @api.get(
            "/metrics",
            dependencies=read,
            response_class=Response,
            responses={200: {"content": {METRICS_TYPE: {"schema": {"type": "string"}}}}},
        )
        async def prometheus(c: C, request: Request) -> Response:
            """Prometheus text format: the database's counts, counters and settings, and
            the health of its tables; with a replica, its lag."""
            replica = the_replica(request)
            body = await render(replica or c, primary=c if replica is not None else None)
            return Response(body, media_type=METRICS_TYPE)

    # Each route's documented answers beyond ERRORS: 404 where a path names something, 409
    # for writes, 401 where the token is needed (only when one is set).
    for route in api.routes:
        if isinstance(route, APIRoute):
            is_write = not (route.methods or set()) <= {"GET", "HEAD"}
            extra = {**(MISSING if "{" in route.path else {}), **(CONFLICT if is_write else {})}
            if write if is_write else read:
                extra.update(_errors(401))
            route.responses = {**extra, **route.responses}
    return api
