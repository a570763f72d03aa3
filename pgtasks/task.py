"""Declaring tasks: `BaseTask` subclasses and plain functions, registered by type name.

A worker only claims the types its registry knows, so several apps can share one
database without stealing each other's work.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar, TypeVar, get_type_hints

from pydantic import BaseModel, ValidationError

from pgtasks.errors import ParamsValidationError, PgTasksError
from pgtasks.schedules import Schedule


class BaseTask:
    """Subclass, implement `execute`, and decorate with `@task_register("type")`.

    Class attributes set the type's defaults; a submit call may override each of them.
    `execute` may be `async def` (runs on the worker's event loop) or a plain `def` (runs in
    a thread, with a blocking context). Annotate `params` with a pydantic model, or set
    `Params`, and the worker validates and passes the model instead of a dict.
    """

    Params: ClassVar[type[BaseModel] | None] = None
    queue: ClassVar[str | None] = None
    max_retries: ClassVar[int | None] = None
    timeout: ClassVar[float | timedelta | None] = None
    retry_delay: ClassVar[float | None] = None  # backoff base in seconds (None: settings)
    no_retry_on: ClassVar[tuple[type[BaseException], ...]] = ()

    def execute(self, ctx: Any, params: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement execute(ctx, params)")

    @classmethod
    def s(cls, params: Any = None, **options: Any) -> Any:
        """A workflow node of this task (pgtasks.workflows): `chain(A.s({...}), B.s())`."""
        from pgtasks.workflows import task_node

        return task_node(cls, params, **options)


@dataclass
class TaskSpec:
    """Everything a worker or client needs to know about one task type."""

    name: str
    handler: Callable[..., Any]
    is_async: bool
    params_model: type[BaseModel] | None = None
    queue: str | None = None
    max_retries: int | None = None
    timeout: timedelta | None = None
    retry_delay: float | None = None
    no_retry_on: tuple[type[BaseException], ...] = ()
    #: Flow control (docs/flow-control.md): keys derived from the params at submit time.
    unique: Callable[[dict[str, Any]], str | None] | bool | None = None
    unique_for: timedelta | None = None
    concurrency_key: Callable[[dict[str, Any]], str | None] | None = None
    concurrency_limit: int | None = None

    def unique_key_for(self, params: dict[str, Any]) -> str | None:
        """The unique key a submit of these params carries: `unique=True` is the type name
        plus the params as canonical JSON (same params, same key); a callable decides."""
        if self.unique is None or self.unique is False:
            return None
        if self.unique is True:
            return f"{self.name}:{json.dumps(params, sort_keys=True, separators=(',', ':'))}"
        return self.unique(params)

    def concurrency_key_for(self, params: dict[str, Any]) -> str | None:
        return self.concurrency_key(params) if self.concurrency_key is not None else None

    def parse_params(self, raw: dict[str, Any]) -> Any:
        if self.params_model is None:
            return raw
        try:
            return self.params_model.model_validate(raw)
        except ValidationError as exc:
            raise ParamsValidationError(
                f"params for {self.name!r} do not match {self.params_model.__name__}: "
                + "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
                    for e in exc.errors()
                )
            ) from exc


@dataclass
class Registry:
    """Task types by name. `pgtasks.registry` is the default one the decorator fills."""

    specs: dict[str, TaskSpec] = field(default_factory=dict)
    #: Declared schedules by name; a worker upserts them when it starts.
    schedules: dict[str, Schedule] = field(default_factory=dict)

    def add_schedule(self, schedule: Schedule) -> None:
        old = self.schedules.get(schedule.name)
        if old is not None and old != schedule:
            raise PgTasksError(f"schedule {schedule.name!r} is already declared differently")
        self.schedules[schedule.name] = schedule

    def add(self, spec: TaskSpec) -> None:
        old = self.specs.get(spec.name)
        if old is not None and old.handler is not spec.handler:
            raise PgTasksError(f"task type {spec.name!r} is already registered")
        self.specs[spec.name] = spec

    def get(self, name: str) -> TaskSpec | None:
        return self.specs.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self.specs

    def __iter__(self) -> Iterator[TaskSpec]:
        return iter(self.specs.values())

    def names(self) -> list[str]:
        return sorted(self.specs)


registry = Registry()

T = TypeVar("T")


def _to_timedelta(value: float | timedelta | None) -> timedelta | None:
    if value is None or isinstance(value, timedelta):
        return value
    return timedelta(seconds=float(value))


def _params_model(
    fn: Callable[..., Any], declared: type[BaseModel] | None
) -> type[BaseModel] | None:
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


def task_register(
    name: str,
    *,
    queue: str | None = None,
    max_retries: int | None = None,
    timeout: float | timedelta | None = None,
    retry_delay: float | None = None,
    no_retry_on: tuple[type[BaseException], ...] = (),
    params: type[BaseModel] | None = None,
    schedule: str | None = None,
    every: float | timedelta | None = None,
    timezone: str = "UTC",
    into: Registry | None = None,
    unique: Callable[[dict[str, Any]], str | None] | bool | None = None,
    unique_for: float | timedelta | None = None,
    concurrency_key: Callable[[dict[str, Any]], str | None] | None = None,
    concurrency_limit: int | None = None,
) -> Callable[[T], T]:
    """Register a `BaseTask` subclass or a function `(ctx, params)` as task type `name`.

    `schedule` (a cron expression, in `timezone`) or `every` also declares a schedule named
    after the type, with empty params; `pgtasks.schedule(...)` declares more (other params,
    overlap and catch-up policies).

    Flow control (enforced by the database, docs/flow-control.md): `unique=True` makes
    submits with equal params one task while it is active, `unique=lambda p: ...` derives
    the key; `unique_for` keeps the key taken for that long after the first submit;
    `concurrency_key=lambda p: ...` with `concurrency_limit` (default 1) bounds how many
    tasks of one key run at once. Keys are computed from the params as JSON (a dict).
    """
    if not name or not name.strip():
        raise PgTasksError("task_register needs a non-empty type name")
    if unique_for is not None and not unique:
        raise PgTasksError("unique_for needs unique=")
    if concurrency_limit is not None and concurrency_key is None:
        raise PgTasksError("concurrency_limit needs concurrency_key=")
    flow: dict[str, Any] = {
        "unique": unique,
        "unique_for": _to_timedelta(unique_for),
        "concurrency_key": concurrency_key,
        "concurrency_limit": concurrency_limit,
    }
    target = into if into is not None else registry

    def decorate(obj: T) -> T:
        if inspect.isclass(obj) and issubclass(obj, BaseTask):
            instance = obj()
            fn = instance.execute
            spec = TaskSpec(
                name=name,
                handler=fn,
                is_async=inspect.iscoroutinefunction(fn),
                params_model=_params_model(fn, params or obj.Params),
                queue=queue or obj.queue,
                max_retries=max_retries if max_retries is not None else obj.max_retries,
                timeout=_to_timedelta(timeout if timeout is not None else obj.timeout),
                retry_delay=retry_delay if retry_delay is not None else obj.retry_delay,
                no_retry_on=tuple(no_retry_on) + tuple(obj.no_retry_on),
                **flow,
            )
        elif callable(obj):
            spec = TaskSpec(
                name=name,
                handler=obj,
                is_async=inspect.iscoroutinefunction(obj),
                params_model=_params_model(obj, params),
                queue=queue,
                max_retries=max_retries,
                timeout=_to_timedelta(timeout),
                retry_delay=retry_delay,
                no_retry_on=tuple(no_retry_on),
                **flow,
            )
        else:
            raise PgTasksError(f"@task_register({name!r}) needs a BaseTask subclass or a function")
        target.add(spec)
        if schedule is not None or every is not None:
            target.add_schedule(
                Schedule(
                    name=name,
                    task_type=name,
                    cron=schedule,
                    every=_to_timedelta(every),
                    timezone=timezone,
                    queue=spec.queue,
                )
            )
        obj.task_type = name  # type: ignore[attr-defined]
        if not inspect.isclass(obj):
            # Functions get what BaseTask subclasses inherit: fn.s(params) is a workflow node.
            obj.s = functools.partial(_node_of, name)  # type: ignore[attr-defined]
        return obj

    return decorate


def _node_of(task_type: str, params: Any = None, /, **options: Any) -> Any:
    from pgtasks.workflows import task_node

    return task_node(task_type, params, **options)


def type_name(task: str | Any) -> str:
    """Accept a type name, a registered class or a registered function."""
    if isinstance(task, str):
        return task
    name = getattr(task, "task_type", None)
    if isinstance(name, str):
        return name
    raise PgTasksError(f"{task!r} is not a registered task; decorate it with @task_register")
