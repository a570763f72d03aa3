"""Declaring tasks: `BaseTask` subclasses and plain functions, registered by type name.

`@task_register("type", ...)` puts the declaration into a Registry (pgtasks.registration)
and gives the decorated object its `task_type` and `.s()`, which makes a workflow node of
it. A worker only claims the types its registry knows, so several apps can share one
database without stealing each other's work.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Callable
from typing import Any, ClassVar, ParamSpec, Protocol, TypeVar, Unpack, get_type_hints, overload

from pydantic import BaseModel

from pgtasks.errors import PgTasksError
from pgtasks.registration import (
    KeyFunction,
    Registry,
    Schedule,
    TaskSpec,
    registry,
    type_name,
)
from pgtasks.submission import Duration, ParamsArg, as_timedelta
from pgtasks.workflows import NodeOptions, TaskNode, task_node

__all__ = [
    "BaseTask",
    "Registry",
    "TaskDecorator",
    "TaskFunction",
    "TaskSpec",
    "registry",
    "task_register",
    "type_name",
]

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class BaseTask:
    """Subclass, implement `execute`, and decorate with `@task_register("type")`.

    Class attributes set the type's defaults (the decorator's arguments win over them); a
    submit may override queue, max_retries and timeout. `execute` may be `async def` (runs
    on the worker's event loop) or a plain `def` (runs in a thread, with a blocking
    context). Annotate `params` with a pydantic model, or set `Params`, and the worker
    validates and passes the model instead of a dict. `MyTask.s(params, **options)` is a
    workflow node of the type.
    """

    #: Set by @task_register: the type name submits and workers use.
    task_type: ClassVar[str]
    #: The pydantic model of the params, when `execute`'s `params` is not annotated with
    #: one: the worker validates the params against it and passes the model.
    Params: ClassVar[type[BaseModel] | None] = None
    #: Queue the type's tasks go to (None: the database's default_queue, "default").
    queue: ClassVar[str | None] = None
    #: Retries after the first attempt before the task ends FAILED (None: the database's
    #: setting).
    max_retries: ClassVar[int | None] = None
    #: Longest one attempt may run, in seconds or a timedelta; past it the attempt is
    #: stopped and counts as a failure (None: the database's setting, 4 hours unless
    #: configured).
    timeout: ClassVar[Duration | None] = None
    #: Soft time limit, less than `timeout`: SoftTimeLimitExceeded is raised inside the task
    #: when it passes, so it can clean up before the hard limit (None: none).
    soft_timeout: ClassVar[Duration | None] = None
    #: Base of the exponential backoff between retries, in seconds (None: the database's
    #: setting). Not an exact delay: raise Retry(delay=...) for that.
    backoff_base: ClassVar[Duration | None] = None
    #: Exception classes that fail the task at once, without a retry (like PermanentError).
    no_retry_on: ClassVar[tuple[type[BaseException], ...]] = ()

    def execute(self, ctx: Any, params: Any) -> Any:
        """The task's work: return a JSON-serialisable result, or raise."""
        raise NotImplementedError(f"{type(self).__name__} must implement execute(ctx, params)")

    @classmethod
    def s(cls, params: ParamsArg = None, **options: Unpack[NodeOptions]) -> TaskNode:
        """A workflow node of this task (pgtasks.workflows): `chain(A.s({...}), B.s())`."""
        return task_node(cls, params, **options)


class TaskFunction(Protocol[P, R_co]):
    """A function `@task_register` decorated, as a type checker sees it: still callable
    exactly as before, plus `task_type` and `.s()` (what a BaseTask subclass inherits)."""

    @property
    def task_type(self) -> str:
        """The type name the function was registered under."""
        ...

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    def s(self, params: ParamsArg = None, **options: Unpack[NodeOptions]) -> TaskNode:
        """A workflow node of this task: `chain(extract.s({...}), load.s())`."""
        ...


TaskClass = TypeVar("TaskClass", bound=type[BaseTask])


def _params_model(
    fn: Callable[..., Any], declared: type[BaseModel] | None
) -> type[BaseModel] | None:
    """The pydantic model the handler's `params` argument is annotated with, if any."""
    if declared is not None:
        return declared
    try:
        hints = get_type_hints(fn)
    except Exception:
        return None
    names = [p for p in inspect.signature(fn).parameters if p != "self"]
    if len(names) >= 2:
        hint = hints.get(names[1])
        if inspect.isclass(hint) and issubclass(hint, BaseModel):
            return hint
    return None


def _node_maker(task_type: str) -> Callable[..., TaskNode]:
    def s(params: ParamsArg = None, **options: Unpack[NodeOptions]) -> TaskNode:
        return task_node(task_type, params, **options)

    s.__doc__ = f"A workflow node of task type {task_type!r}."
    return s


_RETRY_DELAY_MOVED = (
    "retry_delay is the base of the exponential backoff and is now called backoff_base; "
    "retry_delay will be removed (an exact delay is Retry(delay=...))"
)


class TaskDecorator:
    """What `@task_register(...)` returns: applied to a BaseTask subclass or a function, it
    registers the type and returns the class unchanged, or the function with `task_type`
    and `.s()` (typed as a TaskFunction)."""

    def __init__(self, declared: TaskSpec, schedule: Schedule | None, into: Registry) -> None:
        self._spec = declared  # all but the handler, which the decorated object brings
        self._schedule = schedule
        self._into = into

    @overload
    def __call__(self, obj: TaskClass, /) -> TaskClass: ...  # type: ignore[overload-overlap]

    # A BaseTask subclass is callable too; the overload above, tried first, keeps its class.
    @overload
    def __call__(self, obj: Callable[P, R], /) -> TaskFunction[P, R]: ...

    def __call__(self, obj: Any, /) -> Any:
        d = self._spec
        if inspect.isclass(obj) and issubclass(obj, BaseTask):
            backoff = obj.backoff_base
            old = getattr(obj, "retry_delay", None)
            if old is not None:
                warnings.warn(
                    f"{obj.__name__}.{_RETRY_DELAY_MOVED}", DeprecationWarning, stacklevel=2
                )
                backoff = backoff if backoff is not None else old
            fn = obj().execute
            # The decorator's arguments win over the class attributes.
            spec = dataclasses.replace(
                d,
                handler=fn,
                is_async=inspect.iscoroutinefunction(fn),
                params_model=_params_model(fn, d.params_model or obj.Params),
                queue=d.queue or obj.queue,
                max_retries=d.max_retries if d.max_retries is not None else obj.max_retries,
                timeout=d.timeout if d.timeout is not None else as_timedelta(obj.timeout),
                soft_timeout=(
                    d.soft_timeout if d.soft_timeout is not None else as_timedelta(obj.soft_timeout)
                ),
                backoff_base=d.backoff_base or as_timedelta(backoff) or None,
                no_retry_on=d.no_retry_on + tuple(obj.no_retry_on),
            )
        elif callable(obj):
            spec = dataclasses.replace(
                d,
                handler=obj,
                is_async=inspect.iscoroutinefunction(obj),
                params_model=_params_model(obj, d.params_model),
            )
        else:
            raise PgTasksError(
                f"@task_register({d.name!r}) needs a BaseTask subclass or a function"
            )
        self._into.add(spec)
        if self._schedule is not None:
            # Routed to the queue the type ended up with (its class's, maybe).
            self._into.add_schedule(dataclasses.replace(self._schedule, queue=spec.queue))
        obj.task_type = d.name
        if not inspect.isclass(obj):
            obj.s = _node_maker(d.name)  # what BaseTask subclasses inherit
        return obj


def task_register(
    name: str,
    *,
    queue: str | None = None,
    max_retries: int | None = None,
    timeout: Duration | None = None,
    soft_timeout: Duration | None = None,
    backoff_base: Duration | None = None,
    no_retry_on: tuple[type[BaseException], ...] = (),
    params: type[BaseModel] | None = None,
    schedule: str | None = None,
    every: Duration | None = None,
    timezone: str = "UTC",
    into: Registry | None = None,
    unique: KeyFunction | bool | None = None,
    unique_for: Duration | None = None,
    concurrency_key: KeyFunction | None = None,
    concurrency_limit: int | None = None,
    retry_delay: float | None = None,
    version: str | None = None,
    compatible_versions: tuple[str, ...] = (),
) -> TaskDecorator:
    """Register a `BaseTask` subclass or a function `(ctx, params)` as task type `name`.

    The policy (queue, max_retries, timeout in seconds, `backoff_base`: the base of the
    exponential backoff between retries, in seconds) is the type's default: a worker
    stores it in the database when it starts, so a submit from anywhere gets it; None
    leaves it to the database's settings. `soft_timeout` (seconds, less than the
    timeout) raises pgtasks.SoftTimeLimitExceeded inside the task when it passes (async
    tasks at their next await, sync ones at their next `ctx` call, which can also check
    `ctx.soft_deadline_passed`), so it can clean up before the hard limit stops it; the
    database computes the soft deadline at each claim. `retry_delay` is the old name of
    `backoff_base` and warns (DeprecationWarning).

    `schedule` (a cron expression, in `timezone`) or `every` also declares a schedule named
    after the type, with empty params; `pgtasks.schedule(...)` declares more (other params,
    overlap and catch-up policies).

    Flow control (enforced by the database, docs/flow-control.md): `unique=True` makes
    submits with equal params one task while it is active, `unique=lambda p: ...` derives
    the key; `unique_for` keeps the key taken for that long after the first submit;
    `concurrency_key=lambda p: ...` with `concurrency_limit` (default 1) bounds how many
    tasks of one key run at once. Keys are computed from the params as JSON (a dict).

    Code versions (docs/long-running-tasks.md): `version="2"` is recorded by the database on
    each task at its first attempt, and a task started by another version is claimed only
    by workers serving it, this one included if it lists the version in
    `compatible_versions=("1",)`; unrecorded tasks go to any worker of the type.
    """
    if not name or not name.strip():
        raise PgTasksError("task_register needs a non-empty type name")
    if retry_delay is not None:
        if backoff_base is not None:
            raise PgTasksError("pass backoff_base only (retry_delay is its old name)")
        warnings.warn(f"task_register: {_RETRY_DELAY_MOVED}", DeprecationWarning, stacklevel=2)
        backoff_base = retry_delay
    if unique_for is not None and not unique:
        raise PgTasksError("unique_for needs unique=")
    if concurrency_limit is not None and concurrency_key is None:
        raise PgTasksError("concurrency_limit needs concurrency_key=")
    declared = TaskSpec(
        name=name,
        handler=_unset,
        is_async=False,
        params_model=params,
        queue=queue,
        max_retries=max_retries,
        timeout=as_timedelta(timeout),
        soft_timeout=as_timedelta(soft_timeout),
        # 0 has always meant "not set" here (the database refuses a zero base, PT112).
        backoff_base=as_timedelta(backoff_base) or None,
        no_retry_on=tuple(no_retry_on),
        unique=unique,
        unique_for=as_timedelta(unique_for),
        concurrency_key=concurrency_key,
        concurrency_limit=concurrency_limit,
        version=version,
        compatible_versions=tuple(compatible_versions),
    )
    scheduled = None
    if schedule is not None or every is not None:
        scheduled = Schedule(
            name=name,
            task_type=name,
            cron=schedule,
            every=as_timedelta(every),
            timezone=timezone,
            queue=queue,
        )
    return TaskDecorator(declared, scheduled, into if into is not None else registry)


def _unset(*_: Any) -> None:  # pragma: no cover - replaced before anything calls it
    raise AssertionError("a declaration's handler is set when it decorates")
