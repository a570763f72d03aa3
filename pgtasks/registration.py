"""What this process declares: task types (`TaskSpec`), schedules (`Schedule`), the `Registry`
that holds both, and `type_name`, which turns a task reference into its type name.

A leaf: it imports nothing of pgtasks but `errors`, so the decorator (pgtasks.task), the
submit rules (pgtasks.submission), workflows, schedules, the worker, the web app and the
CLI all read declarations from here without importing one another.

A worker only claims the types its registry knows, so several apps can share one database
without stealing each other's work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol, TypeAlias
from zoneinfo import ZoneInfo

from croniter import croniter
from pydantic import BaseModel, ValidationError

from pgtasks.errors import ParamsValidationError, PgTasksError, Undecodable

#: Derives a flow-control key (unique or concurrency) from a submit's params, as JSON (a
#: dict); None means the submit carries no key.
KeyFunction: TypeAlias = Callable[[dict[str, Any]], str | None]


class Registered(Protocol):
    """A class or function `@task_register` decorated: it carries its `task_type`.

    `submit`, `schedule`, `task_node` and `.s()` accept one wherever they accept a type
    name, so code refers to a task by the object it defined rather than by a string.
    """

    @property
    def task_type(self) -> str:
        """The type name it was registered under."""
        ...


#: A task type by name, or by the registered class or function.
TaskRef: TypeAlias = str | Registered


def type_name(task: TaskRef) -> str:
    """The type name of `task`: a name as it is, else the `task_type` the decorator set.

    An undecorated object raises PgTasksError here, at the call that named it, rather
    than as an unknown type in the database.
    """
    if isinstance(task, str):
        return task
    name = getattr(task, "task_type", None)
    if isinstance(name, str):
        return name
    raise PgTasksError(f"{task!r} is not a registered task; decorate it with @task_register")


@dataclass
class TaskSpec:
    """Everything a worker or client needs to know about one task type.

    The policy fields (queue, max_retries, timeout, soft_timeout, backoff_base) are the
    type's declared defaults; None leaves the decision to the database (the type's
    registered policy, else its settings). The flow-control fields say how a submit
    derives its keys from params (docs/flow-control.md); pgtasks.submission applies them.
    """

    name: str
    handler: Callable[..., Any]
    is_async: bool
    params_model: type[BaseModel] | None = None
    queue: str | None = None
    max_retries: int | None = None
    timeout: timedelta | None = None
    #: The soft time limit, less than timeout: SoftTimeLimitExceeded is raised inside the
    #: task when it passes (None: the database's rule, the type's registered one or none).
    soft_timeout: timedelta | None = None
    #: The base of the exponential backoff between retries (None: the database's setting).
    backoff_base: timedelta | None = None
    no_retry_on: tuple[type[BaseException], ...] = ()
    #: The code version of the handler (None: unversioned): recorded on each task at its
    #: first attempt; later attempts go only to workers serving that version.
    version: str | None = None
    #: Older versions whose started tasks this handler can resume as well.
    compatible_versions: tuple[str, ...] = ()
    unique: KeyFunction | bool | None = None
    unique_for: timedelta | None = None
    concurrency_key: KeyFunction | None = None
    concurrency_limit: int | None = None

    def parse_params(self, raw: dict[str, Any]) -> Any:
        """The params as the handler takes them: the pydantic model when the type declares
        one (ParamsValidationError, which no retry fixes, when they do not match), else
        the dict itself. Params the codec could not decode (Undecodable) fail the task
        the same way: no retry decodes them."""
        if isinstance(raw, Undecodable):
            raise ParamsValidationError(f"params for {self.name!r} cannot be decoded: {raw}")
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


@dataclass(frozen=True)
class Schedule:
    """One schedule as declared in code (`pgtasks.schedule`, `@task_register(schedule=)`).

    Exactly one of `cron` (five fields, in `timezone`) and `every`. The database keeps and
    fires schedules (sql/0006_schedules.sql); a worker upserts the declared ones when it
    starts. The checks here repeat none of the database's rules but make a bad declaration
    fail when the module is imported, not when a worker starts.
    """

    name: str
    task_type: str
    cron: str | None = None
    every: timedelta | None = None
    params: dict[str, Any] = field(default_factory=dict)
    queue: str | None = None
    priority: int | None = None
    timezone: str = "UTC"
    overlap: str = "allow"
    catch_up: timedelta = timedelta(0)
    misfire_grace: timedelta | None = None

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise PgTasksError(f"schedule {self.name!r}: give exactly one of cron and every")
        # croniter also reads seconds fields and L/W/#, which the database refuses (PT401):
        # five fields or a macro here, so a bad declaration fails at import, not at start.
        if self.cron is not None and not (
            (len(self.cron.split()) == 5 or self.cron.strip().startswith("@"))
            and croniter.is_valid(self.cron)
        ):
            raise PgTasksError(
                f"schedule {self.name!r}: invalid cron expression {self.cron!r} (5 fields:"
                " minute hour day-of-month month day-of-week)"
            )
        try:
            ZoneInfo(self.timezone)  # unknown zones fail here, not when the worker starts
        except (ValueError, KeyError) as exc:
            msg = f"schedule {self.name!r}: unknown time zone {self.timezone!r}"
            raise PgTasksError(msg) from exc


@dataclass
class Registry:
    """Task types and schedules by name. `pgtasks.registry` is the default one that
    `@task_register` and `pgtasks.schedule` fill and that `Client.submit` reads; pass
    `into=` to them and `registry=` to a Worker to keep a set of types apart."""

    #: Declared task types by name.
    specs: dict[str, TaskSpec] = field(default_factory=dict)
    #: Declared schedules by name; a worker upserts them when it starts.
    schedules: dict[str, Schedule] = field(default_factory=dict)

    def add(self, spec: TaskSpec) -> None:
        """Register a type; a second, different handler under the same name is an error
        (re-importing the same module is not)."""
        old = self.specs.get(spec.name)
        if old is not None and old.handler is not spec.handler:
            raise PgTasksError(f"task type {spec.name!r} is already registered")
        self.specs[spec.name] = spec

    def add_schedule(self, schedule: Schedule) -> None:
        """Declare a schedule; the same name declared differently is an error."""
        old = self.schedules.get(schedule.name)
        if old is not None and old != schedule:
            raise PgTasksError(f"schedule {schedule.name!r} is already declared differently")
        self.schedules[schedule.name] = schedule

    def get(self, name: str) -> TaskSpec | None:
        """The type's declaration, or None for a type this process did not declare."""
        return self.specs.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self.specs

    def __iter__(self) -> Iterator[TaskSpec]:
        return iter(self.specs.values())

    def names(self) -> list[str]:
        """The registered type names, sorted."""
        return sorted(self.specs)


#: The default registry (see Registry).
registry = Registry()
