"""The typed Python face of the SQL API: submit, inspect, cancel, retry, wait.

Every call is one SQL function or view; the database decides, the client asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, TypeAlias, get_args, overload

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from pydantic import BaseModel, ConfigDict

from pgtasks import db, queries, tracing
from pgtasks.config import resolve_url
from pgtasks.errors import (
    InvalidArgument,
    PgTasksError,
    TaskCancelled,
    TaskFailed,
    TaskNotFound,
    WorkflowFailed,
    WorkflowNotFound,
)
from pgtasks.registration import TaskRef, type_name
from pgtasks.submission import (
    Duration,
    ParamsArg,
    as_timedelta,
    batch_flow_keys,
    flow_keys,
    params_json,
    policy,
    run_at_for,
)
from pgtasks.workflows import Node, SubmittedWorkflow, compile_workflow

#: The status list, written once on the Python side (the database's enum pgtasks.status;
#: tests/test_client.py checks that the two agree). WAITING: unfinished parents (sql/0012).
Status = Literal["WAITING", "PENDING", "RUNNING", "COMMIT", "DONE", "FAILED", "CANCELLED"]
STATUSES: tuple[str, ...] = get_args(Status)
TERMINAL = frozenset({"DONE", "FAILED", "CANCELLED"})


class TaskInfo(BaseModel):
    """One row of `pgtasks.task_status`: a task's state as operators and callers see it.

    `unique_key` is the key it was submitted with (None: none), which `Client.find` looks
    tasks up by.
    """

    id: int
    task_type: str
    queue: str
    status: Status
    priority: int
    attempt: int
    retries: str
    percent: float | None = None
    progress_current: int | None = None
    progress_total: int | None = None
    progress_message: str | None = None
    worker_id: str | None = None
    run_at: datetime
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    elapsed: timedelta | None = None
    result: Any = None
    error: str | None = None
    unique_key: str | None = None

    @property
    def finished(self) -> bool:
        """DONE, FAILED or CANCELLED: nothing will change it again but an operator's retry."""
        return self.status in TERMINAL


class AttemptError(BaseModel):
    """One failed attempt of a task: its error text and traceback, as the worker sent them."""

    attempt: int
    error: str
    traceback: str | None = None
    at: datetime


class TaskDetail(TaskInfo):
    """A task with everything an operator looks at: params, each attempt's error, steps.

    `schedule` and `schedule_tick` name the schedule and tick that created the task (None
    for a task submitted otherwise). `workflow_id` and `workflow_node` name the workflow
    and node a task belongs to (None for a task submitted on its own). `spawned_by` is the
    task that spawned it as a child (`ctx.spawn`), None for other tasks; `Client.children`
    lists a task's own children.
    """

    params: Any = None
    errors: list[AttemptError] = []
    steps: list[str] = []
    workflow_id: int | None = None
    workflow_node: str | None = None
    schedule: str | None = None
    schedule_tick: datetime | None = None
    spawned_by: int | None = None


class TaskPage(BaseModel):
    """One page of `Client.page`: `total` counts every task that matches the filters."""

    items: list[TaskInfo]
    total: int
    page: int
    page_size: int


class TaskLog(BaseModel):
    """One line of `pgtasks.task_logs`; `logger` is the Python logger name, if any."""

    id: int
    task_id: int
    attempt: int
    level: str
    message: str
    logger: str | None = None
    at: datetime


class ActiveTask(BaseModel):
    """One row of `pgtasks.active_tasks`: a RUNNING task, the worker running it and how
    far it got (`Client.active`).

    `host`, `pid` and `worker_alive` are None for a worker that never registered (a claim
    from psql, or a worker in another language that skips register_worker). A dead
    worker's task stays here, `worker_alive` false, until its lease runs out and rescue
    hands it on. `started_at` is the first attempt's start, `attempt_started_at` this
    one's; `running_for` counts from the latter, `lease_left` to `lease_expires_at` (both
    by the database's clock). In JSON the two intervals are seconds.
    """

    model_config = ConfigDict(ser_json_timedelta="float")

    id: int
    task_type: str
    queue: str
    worker_id: str
    host: str | None = None
    pid: int | None = None
    worker_alive: bool | None = None
    attempt: int
    started_at: datetime
    attempt_started_at: datetime
    running_for: timedelta
    progress_current: int | None = None
    progress_total: int | None = None
    percent: float | None = None
    progress_message: str | None = None
    lease_expires_at: datetime
    deadline: datetime
    lease_left: timedelta


class ReplicaLag(BaseModel):
    """How stale the server a client reads from is (pgtasks.replica_lag, `Client.replica_lag`).

    `lag_seconds` is 0 on a primary and on a replica that has replayed everything its live
    WAL receiver got, else the age of the last commit it replayed (None: none replayed
    since it started); `stale`: a replica whose lag is above the threshold asked with, or
    unknown. `receiving`: a WAL receiver runs (False: cut off from its primary).
    """

    in_recovery: bool
    receiving: bool
    last_replayed_commit_at: datetime | None = None
    lag_seconds: float | None = None
    stale: bool


class TaskEvent(BaseModel):
    """One status change of a task (pgtasks.task_history), oldest first."""

    at: datetime
    from_status: Status | None
    to_status: Status
    attempt: int
    worker_id: str | None
    #: Why a RUNNING -> COMMIT parked the task, for a snooze or a wait for an event.
    note: str | None = None
    #: Orders one task's changes as they committed.
    event_id: int | None = None


def _jsonable_payload(payload: Any) -> Any:
    """An event payload as the database stores it (a pydantic model as its JSON form)."""
    dump = getattr(payload, "model_dump", None)
    return dump(mode="json") if callable(dump) else payload


def _status(status: str | None) -> str | None:
    """A status filter, checked here so a typo says what would do (case does not matter)."""
    if status is None:
        return None
    if status.upper() not in STATUSES:
        raise PgTasksError(f"unknown status {status!r}; use {', '.join(STATUSES)}")
    return status.upper()


def _text(name: str, value: str | None) -> str | None:
    """A text argument PostgreSQL can receive: text cannot hold NUL, and the server would
    refuse the whole statement with an encoding error instead of answering nothing."""
    if value is not None and "\x00" in value:
        raise PgTasksError(f"{name} cannot contain NUL (\\x00): PostgreSQL text cannot hold it")
    return value


#: Where a statement runs: the client's pool, a connection of it, or the caller's connection.
Executor: TypeAlias = asyncpg.Connection | asyncpg.Pool | PoolConnectionProxy


async def _doze(
    woke: asyncio.Event, poll_interval: float, deadline: float | None, late: str
) -> None:
    """Wait for a notification, at most `poll_interval`; TimeoutError(late) once the
    deadline (loop time) passed. Only the waiting times out, never a query halfway."""
    pause = poll_interval
    if deadline is not None:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise TimeoutError(late)
        pause = min(pause, remaining)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(woke.wait(), pause)


async def _joined(connection: Any) -> Executor:
    """The asyncpg connection under `connection`, inside its transaction.

    Duck-typed, so the core never imports SQLAlchemy: an AsyncSession has `sync_session`,
    an AsyncConnection `get_raw_connection`. SQLAlchemy's asyncpg adapter sends BEGIN only
    with its first statement; one no-op through SQLAlchemy starts it when it has not, so
    our submit is inside the transaction the caller commits or rolls back.
    """
    if isinstance(connection, asyncpg.Connection | PoolConnectionProxy | asyncpg.Pool):
        return connection  # asyncpg itself
    if hasattr(connection, "sync_session"):
        connection = await connection.connection()
    if not hasattr(connection, "get_raw_connection"):
        raise PgTasksError(
            "connection must be an asyncpg connection or a SQLAlchemy AsyncConnection/"
            f"AsyncSession, got {type(connection).__name__}"
        )
    raw = (await connection.get_raw_connection()).driver_connection
    if not isinstance(raw, asyncpg.Connection):
        raise PgTasksError("a SQLAlchemy connection must use the asyncpg driver")
    if not raw.is_in_transaction():
        await connection.exec_driver_sql("SELECT 1")
    return raw


#: Items per JSON document that submit_many sends (queries.SUBMIT_TASKS): the server
#: parses 1,000 small params in one document at 0.36 us each, 10,000 at 0.75.
DOCUMENT_ITEMS = 1000
#: A document of more characters is sent as one document per item instead. A jsonb value
#: stops at 256 MB, and its binary form can be six times its text ("[1,1,...]"); a single
#: item that large is refused either way.
DOCUMENT_MAX_CHARS = 16 * 1024 * 1024


def params_documents(items: list[dict[str, Any]]) -> list[str]:
    """The params of a batch as JSON arrays of up to DOCUMENT_ITEMS objects, in order: one
    json.dumps per document costs a tenth of one per item (0.27 against 2.2 us per item)."""
    documents: list[str] = []
    for lo in range(0, len(items), DOCUMENT_ITEMS):
        chunk = items[lo : lo + DOCUMENT_ITEMS]
        document = db.dumps(chunk)
        if len(document) > DOCUMENT_MAX_CHARS and len(chunk) > 1:
            documents.extend(db.dumps([p]) for p in chunk)
        else:
            documents.append(document)
    return documents


class SubmitResult(int):
    """The id of a submitted task (an int, as before), plus whether this submit created it:
    `created` is False when a task with the same unique key was already active (or its
    `unique_for` window still ran), and the id is that task's."""

    #: False when a task with the same unique key was already active (or its unique_for
    #: window still ran): the id is that task's.
    created: bool

    def __new__(cls, task_id: int, created: bool = True) -> SubmitResult:
        self = super().__new__(cls, task_id)
        self.created = created
        return self

    def __repr__(self) -> str:
        return f"SubmitResult({int(self)}, created={self.created})"

    def __str__(self) -> str:  # prints as the id, like the int it replaces
        return str(int(self))


class Client:
    """Use as `async with Client(url) as client:`. With no url, the configured database.

    Pass `connection=` to `submit` to enqueue inside your own transaction: the task exists
    only if your transaction commits.
    """

    def __init__(self, url: str | None = None, *, pool: asyncpg.Pool | None = None) -> None:
        self._url = url
        self._pool = pool
        self._owns_pool = pool is None

    async def connect(self) -> Client:
        """Open the pool (at most 10 connections), unless one was given or is open; returns
        the client. `async with Client()` calls it."""
        if self._pool is None:
            url = await resolve_url(self._url)
            self._pool = await db.create_pool(url, min_size=1, max_size=10)
        return self

    async def close(self) -> None:
        """Close the pool this client opened (a pool passed in stays open: its owner
        closes it)."""
        if self._pool is not None and self._owns_pool:
            await self._pool.close()
            self._pool = None

    async def __aenter__(self) -> Client:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def pool(self) -> asyncpg.Pool:
        """The asyncpg pool, for statements of your own (plain SQL submits included)."""
        if self._pool is None:
            raise PgTasksError("Client is not connected; use `async with Client() as c:`")
        return self._pool

    # -- submitting ----------------------------------------------------------------------

    async def _prepare(
        self,
        task: TaskRef,
        queue: str | None,
        priority: int | None,
        run_at: datetime | None,
        delay: Duration | None,
        max_retries: int | None,
        timeout: Duration | None,
        connection: Any,
        soft_timeout: Duration | None = None,
    ) -> tuple[Executor, str, tuple[Any, ...], timedelta | None]:
        """Where to run a submit, the type name, the submit_task arguments after params
        (queue, priority, run_at, max_retries, timeout, backoff_base) and the soft timeout:
        pgtasks.submission's rules, the same a workflow node follows."""
        name = type_name(task)
        p = policy(name, queue, max_retries, timeout, soft_timeout)
        return (
            self.pool if connection is None else await _joined(connection),
            name,
            (
                p.queue,
                priority,
                run_at_for(run_at, delay),
                p.max_retries,
                p.timeout,
                p.backoff_base,
            ),
            p.soft_timeout,
        )

    # A TaskNode has a task_type, so it also fits the second overload; tried first, this
    # one gives a workflow its SubmittedWorkflow.
    @overload
    async def submit(  # type: ignore[overload-overlap]
        self,
        task: Node,
        params: None = None,
        *,
        queue: None = None,
        priority: None = None,
        run_at: None = None,
        delay: None = None,
        max_retries: None = None,
        timeout: None = None,
        soft_timeout: None = None,
        connection: Any = None,
        unique_key: None = None,
        unique_for: None = None,
        concurrency_key: None = None,
        concurrency_limit: None = None,
        depends_on: None = None,
        on_parent_failure: None = None,
        idempotency_key: None = None,
    ) -> SubmittedWorkflow: ...

    @overload
    async def submit(
        self,
        task: TaskRef,
        params: ParamsArg = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        run_at: datetime | None = None,
        delay: Duration | None = None,
        max_retries: int | None = None,
        timeout: Duration | None = None,
        soft_timeout: Duration | None = None,
        connection: Any = None,
        unique_key: str | None = None,
        unique_for: Duration | None = None,
        concurrency_key: str | None = None,
        concurrency_limit: int | None = None,
        depends_on: Sequence[int] | None = None,
        on_parent_failure: Literal["cancel", "run"] | None = None,
        idempotency_key: str | None = None,
    ) -> SubmitResult: ...

    async def submit(
        self,
        task: TaskRef | Node,
        params: ParamsArg = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        run_at: datetime | None = None,
        delay: Duration | None = None,
        max_retries: int | None = None,
        timeout: Duration | None = None,
        soft_timeout: Duration | None = None,
        connection: Any = None,
        unique_key: str | None = None,
        unique_for: Duration | None = None,
        concurrency_key: str | None = None,
        concurrency_limit: int | None = None,
        depends_on: Sequence[int] | None = None,
        on_parent_failure: Literal["cancel", "run"] | None = None,
        idempotency_key: str | None = None,
    ) -> SubmitResult | SubmittedWorkflow:
        """Enqueue one task. `task` is a type name or a registered task.

        A workflow (`chain`, `group`, `chord`, `MyTask.s(...)`; pgtasks.workflows) is
        submitted whole, as `submit_workflow` does, and a SubmittedWorkflow comes back; its
        options live in its nodes, so passing any here is an error.
        `soft_timeout` (less than the timeout) raises SoftTimeLimitExceeded inside the
        task when it passes. `depends_on` (task ids) makes the task wait until those
        tasks ended; a failed or cancelled one cancels it, unless
        `on_parent_failure="run"`.

        Returns a SubmitResult: the task's id (an int subclass, so code that used the id
        keeps working) and `.created`, False when `unique_key` matched an active task (or
        a `unique_for` window) and that task's id came back instead. Keys default to what
        the type's @task_register(unique=..., concurrency_key=...) derives from params.

        `idempotency_key` makes a submit safe to send again (after an error whose commit
        may have landed, a failover say): it is the task's unique_key, so a second submit
        of the same type and key returns the first task's id with `.created` False. Pass
        `unique_for` longer than your retries can take, or the key is free again once the
        task has finished (docs/reliability.md).

        `connection` joins your transaction: an asyncpg connection, or a SQLAlchemy
        AsyncConnection / AsyncSession on asyncpg. Roll back and the task never existed.
        """
        if idempotency_key is not None:
            if unique_key is not None:
                raise InvalidArgument(
                    "idempotency_key is the task's unique_key: pass only one",
                    hint="drop unique_key, or pass the key as unique_key alone",
                )
            unique_key = idempotency_key
        if isinstance(task, Node):
            given = (
                params, queue, priority, run_at, delay, max_retries, timeout, soft_timeout,
                unique_key, unique_for, concurrency_key, concurrency_limit, depends_on,
                on_parent_failure,
            )  # fmt: skip
            if any(v is not None for v in given):
                raise PgTasksError(
                    "a workflow carries its params and options in its nodes (MyTask.s(params,"
                    " queue=...)); submit(workflow) takes only connection="
                )
            return await self.submit_workflow(task, connection=connection)
        conn, name, options, soft = await self._prepare(
            task, queue, priority, run_at, delay, max_retries, timeout, connection, soft_timeout
        )
        raw = params_json(params)
        flow = flow_keys(name, raw, unique_key, unique_for, concurrency_key, concurrency_limit)
        if depends_on is not None or on_parent_failure is not None:
            if unique_key is not None or unique_for is not None:
                # submit_task has no unique key: say so rather than drop it.
                raise InvalidArgument(
                    "unique_key and unique_for do not combine with depends_on",
                    hint="drop the key (or idempotency_key), or submit without depends_on",
                )
            async with db.translated():
                made = SubmitResult(
                    await conn.fetchval(
                        queries.SUBMIT_DEPENDENT, name, db.dumps(raw), *options,
                        flow.concurrency_key, flow.concurrency_limit,
                        list(depends_on or []), on_parent_failure, soft,
                        *tracing.current_context(),
                    )
                )  # fmt: skip
            tracing.submit_event(name, [made])
            return made
        async with db.translated():
            if flow.empty:  # no key: always created, cheaper call
                made = SubmitResult(
                    await conn.fetchval(
                        queries.SUBMIT_TASK,
                        name,
                        db.dumps(raw),
                        *options,
                        soft,
                        *tracing.current_context(),
                    )
                )
                tracing.submit_event(name, [made])
                return made
            row = await conn.fetchrow(
                queries.SUBMIT_OR_GET, name, db.dumps(raw), *options,
                flow.unique_key, flow.unique_for, flow.concurrency_key, flow.concurrency_limit,
                soft, *tracing.current_context(),
            )  # fmt: skip
        assert row is not None  # submit_or_get returns exactly one row or raises
        tracing.submit_event(name, [row["id"]])
        return SubmitResult(row["id"], row["created"])

    async def submit_many(
        self,
        task: TaskRef,
        params_list: Sequence[ParamsArg],
        *,
        queue: str | None = None,
        priority: int | None = None,
        run_at: datetime | None = None,
        delay: Duration | None = None,
        max_retries: int | None = None,
        timeout: Duration | None = None,
        soft_timeout: Duration | None = None,
        connection: Any = None,
        unique_keys: Sequence[str | None] | None = None,
        unique_for: Duration | None = None,
        concurrency_keys: Sequence[str | None] | None = None,
        concurrency_limit: int | None = None,
    ) -> list[int]:
        """Enqueue many tasks of one type in one statement; returns ids in input order.

        `unique_keys` and `concurrency_keys` hold one key (or None) per item; left out, the
        type's registration derives them. An item whose unique key is taken returns the
        id of the task that holds it."""
        conn, name, options, soft = await self._prepare(
            task, queue, priority, run_at, delay, max_retries, timeout, connection, soft_timeout
        )
        # A dict is taken as it is (params_json would copy it: 0.3 us per item).
        raws = [p if type(p) is dict else params_json(p) for p in params_list]
        flow = batch_flow_keys(
            name,
            raws,
            None if unique_keys is None else list(unique_keys),
            unique_for,
            None if concurrency_keys is None else list(concurrency_keys),
            concurrency_limit,
        )
        async with db.translated():
            ids = await conn.fetchval(
                queries.SUBMIT_TASKS,
                name,
                params_documents(raws),
                *options,
                flow.unique_keys,
                flow.unique_for,
                flow.concurrency_keys,
                flow.concurrency_limit,
                soft,
                *tracing.current_context(),
            )
        made = [] if ids is None else list(ids)
        tracing.submit_event(name, made)
        return made

    async def submit_workflow(
        self, workflow: Node | dict[str, Any], *, name: str | None = None, connection: Any = None
    ) -> SubmittedWorkflow:
        """Submit a whole graph atomically: a builder tree (chain, group, chord, nodes) or a
        spec dict as submit_workflow takes it (docs/workflows.md). InvalidWorkflow (PT5xx)
        and nothing written for an empty graph, a cycle or an unknown node name."""
        spec = workflow if isinstance(workflow, dict) else compile_workflow(workflow, name=name)
        if name is not None and isinstance(workflow, dict):
            spec = {**spec, "name": name}
        conn = self.pool if connection is None else await _joined(connection)
        async with db.translated():
            out = json.loads(
                await conn.fetchval(
                    queries.SUBMIT_WORKFLOW, db.dumps(spec), *tracing.current_context()
                )
            )
        tracing.submit_event(None, list(out["nodes"].values()))
        return SubmittedWorkflow(out["workflow_id"], out["nodes"])

    # -- reading -------------------------------------------------------------------------

    async def get(self, task_id: int) -> TaskInfo:
        """The task's current state (pgtasks.task_status); TaskNotFound for an unknown id."""
        return await self._read(self.pool, task_id)

    async def find(self, *, unique_key: str, task_type: TaskRef | None = None) -> TaskInfo | None:
        """The newest task submitted with `unique_key`, finished or not; None if there is
        none (any more: pruning deletes finished tasks after the retention).

        Use the key as the job's own id (arq's `_job_id`): submit with
        `unique_key=f"order:{order_id}"`, look it up with `find(unique_key=...)`. Keys
        belong to their task type (a held key stops a second active task of that type
        only), so two types can each have a task with the same key. With `task_type` (a
        name or a registered task) the newest of that type; without it, the newest of any
        type, which another type's submitter can supply: code that acts on the answer
        passes the type. Newest is by id, so once a key came free and was submitted again,
        this is the new task (a retried older task keeps its older id).
        """
        name = None if task_type is None else type_name(task_type)
        row = await self.pool.fetchrow(
            queries.FIND_TASK, _text("unique_key", unique_key), _text("task_type", name)
        )
        return None if row is None else TaskInfo.model_validate(dict(row))

    async def list_tasks(
        self,
        *,
        status: str | None = None,
        queue: str | None = None,
        task_type: str | None = None,
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[TaskInfo]:
        """Tasks, newest first, filtered by status (any case), queue and type. Page with
        `before_id=<last id of the previous page>`; `page` counts the total as well."""
        rows = await self.pool.fetch(
            queries.LIST_TASKS,
            _status(status),
            queue,
            task_type,
            before_id,
            limit,
        )
        return [TaskInfo.model_validate(dict(r)) for r in rows]

    async def page(
        self,
        *,
        status: str | None = None,
        queue: str | None = None,
        task_type: str | None = None,
        page: int = 1,
        page_size: int = 50,
        oldest_first: bool = False,
        unique_key: str | None = None,
    ) -> TaskPage:
        """Page `page` (from 1) of the tasks that match, with their total; newest first.
        With `unique_key`, only the tasks of that key (by its index): the first item of
        the first page is what `find` answers. Items carry no result (`result` is None, a
        page does not read them) and the first 200 characters of `error`; `get` or
        `detail` reads a task's result."""
        if page < 1 or page_size < 1:
            raise PgTasksError("page and page_size start at 1")
        args: list[Any] = [
            _status(status),
            queue,
            task_type,
            oldest_first,
            page_size,
            (page - 1) * page_size,
        ]
        if unique_key is None:
            rows = await self.pool.fetch(queries.TASK_PAGE, *args)
        else:
            key = _text("unique_key", unique_key)
            rows = await self.pool.fetch(queries.KEY_TASK_PAGE, *args, key)
        items = [TaskInfo.model_validate(dict(r)) for r in rows if r["id"] is not None]
        return TaskPage(items=items, total=rows[0]["total"], page=page, page_size=page_size)

    async def detail(self, task_id: int) -> TaskDetail:
        """The task with its params, result, every attempt's error and its step names."""
        row = await self.pool.fetchrow(queries.TASK_DETAIL, task_id)
        if row is None:
            raise TaskNotFound(f"task {task_id} does not exist")
        return TaskDetail.model_validate(dict(row))

    async def logs(
        self, task_id: int, *, after_id: int = 0, limit: int | None = None
    ) -> list[TaskLog]:
        """Log lines after `after_id`, oldest first; at most `limit` of them."""
        if limit is None:
            rows = await self.pool.fetch(queries.TASK_LOGS, task_id, after_id)
        else:
            rows = await self.pool.fetch(queries.TASK_LOGS_PAGE, task_id, after_id, limit)
        return [TaskLog.model_validate(dict(r)) for r in rows]

    async def history(self, task_id: int) -> list[TaskEvent]:
        """Every status change of the task, oldest first."""
        rows = await self.pool.fetch(queries.TASK_HISTORY, task_id)
        return [TaskEvent.model_validate(dict(r)) for r in rows]

    async def errors(self, task_id: int) -> list[dict[str, Any]]:
        """Each failed attempt's error and traceback, oldest first."""
        rows = await self.pool.fetch(queries.TASK_ERRORS, task_id)
        return [dict(r) for r in rows]

    # -- workflows (sql/0012; docs/workflows.md) ------------------------------------------

    async def workflow(self, workflow_id: int) -> dict[str, Any]:
        """The pgtasks.workflows row (state, counts by status) plus "nodes": its tasks with
        node, type, status, progress and parent_ids, in submit order."""
        row = await self.pool.fetchrow(queries.WORKFLOW, workflow_id)
        if row is None:
            raise WorkflowNotFound(f"workflow {workflow_id} does not exist")
        nodes = await self.pool.fetch(queries.WORKFLOW_GRAPH, workflow_id)
        return {**dict(row), "nodes": [dict(n) for n in nodes]}

    async def workflows(self, *, limit: int = 50) -> list[dict[str, Any]]:
        """Workflows, newest first, with their state and counts by status."""
        return [dict(r) for r in await self.pool.fetch(queries.WORKFLOWS, limit)]

    async def cancel_workflow(self, workflow_id: int) -> int:
        """Cancel every unfinished task of the workflow (running ones are told to stop);
        returns how many. WorkflowNotFound for an unknown id."""
        async with db.translated():
            return int(await self.pool.fetchval(queries.CANCEL_WORKFLOW, workflow_id))

    async def wait_workflow(
        self, workflow_id: int, *, timeout: float | None = None, poll_interval: float = 1.0
    ) -> Any:
        """Block until the workflow ended; return its sink nodes' result (the tasks nothing
        depends on): the one result for a chain or chord, else {node name: result}.

        Woken by the sinks' pgtasks_done notifications (each sink is watched, as `wait`
        does), polling as a backstop. Raises WorkflowFailed when it ended failed or
        cancelled, TimeoutError after `timeout` seconds.
        """
        graph = await self.workflow(workflow_id)
        parents = {p for n in graph["nodes"] for p in n["parent_ids"]}
        sinks = [n["task_id"] for n in graph["nodes"] if n["task_id"] not in parents]
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        woke = asyncio.Event()
        watched = {str(t) for t in sinks}

        def on_notify(_c: object, _pid: int, _ch: str, payload: object, /) -> None:
            if payload in watched:
                woke.set()

        async with self.pool.acquire() as conn:
            await conn.add_listener("pgtasks_done", on_notify)
            try:
                for t in sinks:
                    await conn.fetchval(queries.WATCH_TASK, t)
                while True:
                    woke.clear()
                    row = await conn.fetchrow(queries.WORKFLOW, workflow_id)
                    if row is None:
                        raise WorkflowNotFound(f"workflow {workflow_id} does not exist")
                    if row["state"] != "running":
                        break
                    await _doze(
                        woke, poll_interval, deadline,
                        f"workflow {workflow_id} did not end within {timeout or 0:g}s",
                    )  # fmt: skip
                tasks = await conn.fetch(
                    queries.TASKS_BY_ID, [n["task_id"] for n in graph["nodes"]]
                )
            finally:
                for t in sinks:
                    with contextlib.suppress(Exception):
                        await conn.execute(queries.UNWATCH_TASK, t)
                with contextlib.suppress(Exception):
                    await conn.remove_listener("pgtasks_done", on_notify)
        by_id = {r["id"]: r for r in tasks}
        if row["state"] != "done":
            errors = {
                r["workflow_node"] or str(r["id"]): r["error"]
                for r in tasks
                if r["status"] in ("FAILED", "CANCELLED") and r["error"]
            }
            raise WorkflowFailed(workflow_id, row["state"], errors)
        results = {by_id[t]["workflow_node"] or str(t): by_id[t]["result"] for t in sinks}
        return next(iter(results.values())) if len(results) == 1 else results

    # -- flow control (docs/flow-control.md) ---------------------------------------------

    async def queues(self) -> list[dict[str, Any]]:
        """Each queue's settings (paused, max_running, rate) next to its live counts."""
        return [dict(r) for r in await self.pool.fetch(queries.QUEUES)]

    async def configure_queue(
        self,
        queue: str,
        *,
        max_running: int | None = None,
        rate_limit: int | None = None,
        rate_period: Duration | None = None,
    ) -> None:
        """Replace the queue's limits (None: no limit): at most `max_running` running at
        once, at most `rate_limit` started per `rate_period`. Pausing is left as it is."""
        async with db.translated():
            await self.pool.execute(
                queries.CONFIGURE_QUEUE, queue, max_running, rate_limit, as_timedelta(rate_period)
            )

    async def pause_queue(self, queue: str) -> None:
        """Stop workers claiming from the queue; running tasks finish, submits still land."""
        async with db.translated():
            await self.pool.execute(queries.PAUSE_QUEUE, queue)

    async def resume_queue(self, queue: str) -> None:
        """Let workers claim from the queue again."""
        async with db.translated():
            await self.pool.execute(queries.RESUME_QUEUE, queue)

    async def types(self) -> list[dict[str, Any]]:
        """Registered task types with their effective policy (pgtasks.registered_types)."""
        return [dict(r) for r in await self.pool.fetch(queries.REGISTERED_TYPES)]

    async def queue_stats(self) -> list[dict[str, Any]]:
        """One row per queue (pgtasks.queue_stats): depth by status, ready, oldest, rates."""
        return [dict(r) for r in await self.pool.fetch(queries.QUEUE_STATS)]

    async def failed(
        self, *, queue: str | None = None, task_type: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """Dead letters (pgtasks.failed_tasks), newest first, with their last error."""
        rows = await self.pool.fetch(queries.FAILED_TASKS, queue, task_type, limit)
        return [dict(r) for r in rows]

    async def workers(self, *, include_dead: bool = False) -> list[dict[str, Any]]:
        """Workers (pgtasks.workers), alive first; `seen_ago` is the time since last seen."""
        return [dict(r) for r in await self.pool.fetch(queries.WORKERS, include_dead)]

    async def active(
        self, *, queue: str | None = None, worker_id: str | None = None, limit: int = 1000
    ) -> list[ActiveTask]:
        """What the workers are running now (pgtasks.active_tasks; Celery's `inspect
        active`): each RUNNING task with its worker's id, host and pid, its attempt, how
        long it has run, its progress and its lease; by worker, longest running first, at
        most `limit`. It reads running tasks only, however long the history."""
        if limit < 1:
            raise PgTasksError("limit starts at 1")
        rows = await self.pool.fetch(
            queries.ACTIVE_TASKS, _text("queue", queue), _text("worker_id", worker_id), limit
        )
        return [ActiveTask.model_validate(dict(r)) for r in rows]

    async def metrics(self) -> dict[str, Any]:
        """What /metrics shows, the one row of pgtasks.metrics: `queues` (queue_stats rows),
        `workers` (alive, dead, slots, running), `runtimes` (per type: count, failed, sum and
        cumulative bucket counts of the tasks finished within `runtime_window`, bounds in
        `runtime_bounds`) and `schedules` (per unpaused schedule: lag_seconds)."""
        row = await self.pool.fetchrow(queries.METRICS)
        assert row is not None  # a view of one row
        return dict(row)

    async def replica_lag(self, threshold: float = 0.0) -> ReplicaLag:
        """How far behind its primary the server of this client's pool is
        (pgtasks.replica_lag); `stale` when it is a replica more than `threshold` seconds
        behind, or whose lag is unknown."""
        row = await self.pool.fetchrow(queries.REPLICA_LAG, float(threshold))
        assert row is not None  # a view of one row
        return ReplicaLag.model_validate(dict(row))

    async def health(self) -> dict[str, Any]:
        """Dead rows and vacuums per pgtasks table (`tables`, rows of pgtasks.table_health)
        and what holds the MVCC horizon back (`xmin_horizon`, rows of
        pgtasks.xmin_horizon): the server's own statistics, so ask the primary."""
        row = await self.pool.fetchrow(queries.HEALTH)
        assert row is not None  # one row of two documents
        return dict(row)

    # -- operator actions ----------------------------------------------------------------

    async def cancel(self, task_id: int) -> str:
        """Cancel; returns the status it had. Raises TaskAlreadyFinished for a finished task."""
        async with db.translated():
            return str(await self.pool.fetchval(queries.CANCEL_TASK, task_id))

    async def send_event(self, task_id: int, name: str, payload: Any = None) -> bool:
        """Deliver the event `name` with its JSON `payload` to the task
        (`pgtasks.send_event`): a task waiting for it (`ctx.wait_for_event`) is claimable at
        once, and one that has not waited yet finds it when it does. False when an event
        of that name was already delivered (the first is kept, so a retried webhook changes
        nothing). Raises EventAfterFinish for a task that ended, TaskNotFound for none.
        Needs pgtasks_admin: an event is a write to the task (docs/security.md)."""
        async with db.translated():
            return bool(
                await self.pool.fetchval(
                    queries.SEND_EVENT, task_id, _text("name", name), _jsonable_payload(payload)
                )
            )

    async def children(self, task_id: int, *, limit: int = 1000) -> list[dict[str, Any]]:
        """The children the task spawned (`ctx.spawn`), in spawn order, at most `limit`:
        child_id, step (the spawn's name), position, task_type, status, progress_current,
        progress_total (pgtasks.task_children)."""
        rows = await self.pool.fetch(queries.TASK_CHILDREN, task_id, limit)
        return [dict(r) for r in rows]

    async def inbox(self, task_id: int) -> list[dict[str, Any]]:
        """The events sent to the task and its waits for them (pgtasks.task_inbox)."""
        rows = await self.pool.fetch(queries.TASK_INBOX, task_id)
        return [dict(r) for r in rows]

    async def retry(self, task_id: int) -> None:
        """Put a FAILED or CANCELLED task back to PENDING."""
        async with db.translated():
            await self.pool.execute(queries.RETRY_TASK, task_id)

    # -- dashboard reads and bulk actions (docs/dashboard.md) -----------------------------

    async def queue_cards(self) -> list[dict[str, Any]]:
        """Per queue: ready, scheduled, running, waiting_on_parents (WAITING), failed,
        oldest_ready_age, paused, limits."""
        return [dict(r) for r in await self.pool.fetch(queries.DASH_QUEUES)]

    async def throughput(self, seconds: float = 300) -> tuple[float, list[dict[str, Any]]]:
        """(the server's clock as epoch seconds, tasks ended per second over the last
        `seconds`: rows of t (epoch second), done, failed)."""
        async with self.pool.acquire() as conn:
            now = float(await conn.fetchval(queries.SERVER_EPOCH))
            rows = await conn.fetch(queries.DASH_THROUGHPUT, now - seconds)
        return now, [dict(r) for r in rows]

    async def chart(
        self, seconds: float = 3600, *, queue: str | None = None
    ) -> list[dict[str, Any]]:
        """The charts of the last `seconds` (60 to 7 days) from the database's roll-up
        (pgtasks.task_chart), oldest bucket first: 10-second buckets up to 2 hours, 5-minute
        ones beyond. Per bucket: `bucket` (its start), `width_s`, `rolled` (false: not rolled
        up yet, counts None), done, failed, cancelled, run_* and wait_* (count, mean, p50,
        p95, max, in seconds), ready and running (sampled depth). `queue` None: every queue.
        A span out of range raises InvalidArgument (PT133)."""
        async with db.translated():
            rows = await self.pool.fetch(queries.TASK_CHART, seconds, queue)
        return [dict(r) for r in rows]

    async def failed_groups(self, *, limit: int = 100) -> list[dict[str, Any]]:
        """Dead letters grouped by type and error fingerprint (pgtasks.error_fingerprint:
        the first line with quoted values, ids, addresses and numbers taken out):
        `fingerprint`, `error` (the newest one's first line), tasks, last_at, last_id."""
        return [dict(r) for r in await self.pool.fetch(queries.DASH_FAILED_GROUPS, limit)]

    async def browse(
        self,
        *,
        status: str | None = None,
        queue: str | None = None,
        task_type: str | None = None,
        search: str | None = None,
        after_id: int | None = None,
        oldest_ready: bool = False,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """A keyset page of tasks: newest first, after `after_id` (the last id of the page
        before); or, with `oldest_ready`, the ready tasks longest waiting first. `search`
        matches type, error and progress message (case-insensitive substring) among the
        newest queries.SEARCH_WINDOW tasks."""
        status = _status(status)
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            await conn.execute(queries.BROWSE_PLANNING)
            floor = None
            if search is not None:
                top = await conn.fetchval(queries.MAX_TASK_ID)
                floor = (top or 0) - queries.SEARCH_WINDOW
            sql, args = queries.dash_task_list(
                status=status,
                queue=queue,
                task_type=task_type,
                search=search,
                after_id=after_id,
                oldest_ready=oldest_ready,
                limit=limit,
                search_floor=floor,
            )
            return [dict(r) for r in await conn.fetch(sql, *args)]

    async def retry_many(
        self,
        ids: Sequence[int] | None = None,
        *,
        status: str | None = None,
        queue: str | None = None,
        task_type: str | None = None,
        error: str | None = None,
        limit: int = 1000,
        fingerprint: str | None = None,
    ) -> list[int]:
        """Retry the FAILED or CANCELLED tasks among `ids` and/or matching the filters
        (`error`: the first line of the error; `fingerprint`: its error_fingerprint, as
        Client.failed_groups gives it), at most `limit`, in one all-or-nothing statement;
        the ids retried."""
        return await self._bulk(
            queries.BULK_RETRY, ids, status, queue, task_type, error, limit, fingerprint
        )

    async def cancel_many(
        self,
        ids: Sequence[int] | None = None,
        *,
        status: str | None = None,
        queue: str | None = None,
        task_type: str | None = None,
        limit: int = 1000,
    ) -> list[int]:
        """Cancel the WAITING, PENDING, COMMIT or RUNNING tasks among `ids` and/or matching the
        filters, at most `limit`, in one all-or-nothing statement; the ids cancelled."""
        return await self._bulk(queries.BULK_CANCEL, ids, status, queue, task_type, None, limit)

    async def _bulk(
        self,
        sql: str,
        ids: Sequence[int] | None,
        status: str | None,
        queue: str | None,
        task_type: str | None,
        error: str | None,
        limit: int,
        fingerprint: str | None = None,
    ) -> list[int]:
        if ids is None and not any((status, queue, task_type, error, fingerprint)):
            raise PgTasksError("pass ids or at least one filter (status, queue, task_type...)")
        id_list = None if ids is None else [int(i) for i in ids]
        async with db.translated():
            rows = await self.pool.fetch(
                sql, id_list, _status(status), queue, task_type, error, limit, fingerprint
            )
        return [r["id"] for r in rows]

    # -- schedules (sql/0006; docs/schedules.md) ------------------------------------------

    async def stranded(self, limit: int = 100) -> list[dict[str, Any]]:
        """Ready tasks whose recorded code version no live worker runs or declares
        compatible (pgtasks.stranded_tasks): no worker claims them until one that serves
        their version starts. Each row names the version and what live workers run."""
        return [dict(r) for r in await self.pool.fetch(queries.STRANDED_TASKS, limit)]

    async def schedules(self) -> list[dict[str, Any]]:
        """Every schedule (pgtasks.schedules) with its next run, last task and skip counts."""
        return [dict(r) for r in await self.pool.fetch(queries.SCHEDULES)]

    async def create_schedule(
        self,
        name: str,
        task_type: TaskRef,
        *,
        cron: str | None = None,
        every: Duration | None = None,
        params: ParamsArg = None,
        queue: str | None = None,
        priority: int | None = None,
        timezone: str = "UTC",
        overlap: str = "allow",
        catch_up: Duration = 0,
        misfire_grace: Duration | None = None,
    ) -> None:
        """Create or update a schedule (exactly one of cron and every). The database
        validates it: InvalidSchedule (PT4xx) and nothing written. Unlike a schedule
        declared in code (pgtasks.schedule), it exists as soon as this returns.
        `misfire_grace`: a tick found later than this is skipped and counted, not run."""
        async with db.translated():
            await self.pool.execute(
                queries.CREATE_SCHEDULE,
                name,
                type_name(task_type),
                cron,
                as_timedelta(every),
                params_json(params),
                queue,
                priority,
                timezone,
                overlap,
                as_timedelta(catch_up),
                as_timedelta(misfire_grace),
            )

    async def drop_schedule(self, name: str) -> None:
        """Delete the schedule; tasks it already enqueued stay. ScheduleNotFound if none."""
        async with db.translated():
            await self.pool.execute(queries.DROP_SCHEDULE, name)

    async def pause_schedule(self, name: str) -> None:
        """Stop firing the schedule until resume_schedule."""
        async with db.translated():
            await self.pool.execute(queries.PAUSE_SCHEDULE, name)

    async def resume_schedule(self, name: str) -> None:
        """Continue from now: ticks that passed while paused are not fired."""
        async with db.translated():
            await self.pool.execute(queries.RESUME_SCHEDULE, name)

    async def trigger_schedule(self, name: str) -> int:
        """Enqueue one task of the schedule now, whatever its overlap policy; its id."""
        async with db.translated():
            return int(await self.pool.fetchval(queries.TRIGGER_SCHEDULE, name))

    # -- waiting -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _watching(
        self, task_id: int, channels: Sequence[str]
    ) -> AsyncIterator[tuple[PoolConnectionProxy, asyncio.Event]]:
        """A connection LISTENing on `channels` for this task, registered as its watcher.

        watch_task makes finishing (and progress, and logs) NOTIFY for this task only while
        someone watches; the event is set on each notification about it. Registering
        before reading the state means no change can slip between the read and the wait.
        """
        woke = asyncio.Event()
        payload_id = str(task_id)

        def on_notify(_c: object, _pid: int, _ch: str, payload: object, /) -> None:
            if payload == payload_id:
                woke.set()

        async with self.pool.acquire() as conn:
            for ch in channels:
                await conn.add_listener(ch, on_notify)
            try:
                async with db.translated():
                    await conn.fetchval(queries.WATCH_TASK, task_id)
                yield conn, woke
            finally:
                with contextlib.suppress(Exception):
                    await conn.execute(queries.UNWATCH_TASK, task_id)
                for ch in channels:
                    with contextlib.suppress(Exception):
                        await conn.remove_listener(ch, on_notify)

    @staticmethod
    async def _read(conn: Executor, task_id: int) -> TaskInfo:
        row = await conn.fetchrow(queries.GET_TASK, task_id)
        if row is None:
            raise TaskNotFound(f"task {task_id} does not exist")
        return TaskInfo.model_validate(dict(row))

    async def wait(
        self, task_id: int, *, timeout: float | None = None, poll_interval: float = 1.0
    ) -> Any:
        """Block until the task finishes; return its result.

        Woken by NOTIFY (registered through pgtasks.watch_task), with a poll as a backstop:
        behind a pooler without LISTEN, and for a task that finishes in the instant its
        watcher registers (the finishing transaction cannot see the registration yet).
        Raises TaskFailed (carrying the error text) for FAILED, TaskCancelled for
        CANCELLED, TaskNotFound for an unknown id, and TimeoutError after `timeout`
        seconds. The timeout only ends the waiting, never a query halfway, so the
        connection and the watcher registration are cleaned up.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        async with self._watching(task_id, ("pgtasks_done",)) as (conn, woke):
            while True:
                woke.clear()
                info = await self._read(conn, task_id)
                if info.status == "DONE":
                    return info.result
                if info.status == "FAILED":
                    raise TaskFailed(task_id, info.error)
                if info.status == "CANCELLED":
                    raise TaskCancelled(task_id)
                await _doze(
                    woke, poll_interval, deadline,
                    f"task {task_id} did not finish within {timeout or 0:g}s "
                    f"(it is {info.status})",
                )  # fmt: skip

    async def follow(
        self, task_id: int, *, poll_interval: float = 1.0, after_id: int = 0
    ) -> AsyncGenerator[tuple[TaskInfo, list[TaskLog]], None]:
        """Yield (state, new log lines) whenever the task changes, until it has finished.

        Woken by the pgtasks_progress / pgtasks_done notifications this watcher enables
        (see watch_task), and every `poll_interval` seconds as a fallback. The last item
        carries the finished state and every remaining line. Use with
        `contextlib.aclosing(...)` if you may stop early, so the connection is released.
        """
        async with contextlib.aclosing(
            self.follow_changes(task_id, poll_interval=poll_interval, after_id=after_id)
        ) as changes:
            async for info, lines, _ in changes:
                yield info, lines

    async def follow_changes(
        self, task_id: int, *, poll_interval: float = 1.0, after_id: int = 0
    ) -> AsyncGenerator[tuple[TaskInfo, list[TaskLog], list[TaskEvent]], None]:
        """follow(), plus every status change since the last item, oldest first (the first
        item has none: its state is the start). A status that lasted less than a poll (a
        one-second COMMIT between two attempts) is still in the list, since the changes
        are read from the task's history, not compared between two reads. State, lines
        and changes of an item are read in one snapshot, so they agree."""
        async with self._watching(task_id, ("pgtasks_progress", "pgtasks_done")) as (conn, woke):
            last = after_id
            seen: int | None = None
            while True:
                woke.clear()
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    info = await self._read(conn, task_id)
                    rows = await conn.fetch(queries.TASK_LOGS, task_id, last)
                    if seen is None:
                        seen = int(await conn.fetchval(queries.TASK_LAST_CHANGE, task_id))
                        changes = []
                    else:
                        changes = [
                            TaskEvent.model_validate(dict(r))
                            for r in await conn.fetch(queries.TASK_CHANGES_AFTER, task_id, seen)
                        ]
                lines = [TaskLog.model_validate(dict(r)) for r in rows]
                if lines:
                    last = lines[-1].id
                if changes:
                    seen = changes[-1].event_id or seen
                yield info, lines, changes
                if info.finished:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woke.wait(), poll_interval)
