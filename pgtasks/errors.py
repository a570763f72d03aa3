"""Typed exceptions, and the map from pgtasks' SQLSTATEs (class PT) to them.

The database raises; Python translates. Callers catch a class, not a string.
"""

from __future__ import annotations

from typing import Any


class PgTasksError(Exception):
    """Base class of every error pgtasks raises on purpose."""


class ConfigurationError(PgTasksError):
    """The environment is not set up the way pgtasks needs; the message says how to fix it."""


class EmbeddedServerError(ConfigurationError):
    """The embedded PostgreSQL could not be started or reached."""


class DatabaseError(PgTasksError):
    """A pgtasks SQL function refused the call. `sqlstate` and `hint` come from the server."""

    #: The SQLSTATE the server raised (class PT); each subclass names its own.
    sqlstate: str = ""

    def __init__(self, message: str, *, sqlstate: str = "", hint: str | None = None) -> None:
        super().__init__(message if not hint else f"{message} ({hint})")
        self.sqlstate = sqlstate or type(self).sqlstate
        self.hint = hint


class IllegalTransition(DatabaseError):
    """A status change the state machine forbids (PT001), e.g. PENDING straight to DONE."""

    sqlstate = "PT001"


class LeaseLost(DatabaseError):
    """The worker's attempt no longer owns the task (rescued, cancelled or re-claimed)."""

    sqlstate = "PT002"


class TaskNotFound(DatabaseError):
    """No task has that id (PT003)."""

    sqlstate = "PT003"


class TaskAlreadyFinished(DatabaseError):
    """The task already ended, so it cannot be cancelled or finished again (PT004)."""

    sqlstate = "PT004"


class UniqueKeyHeld(DatabaseError):
    """retry_task refused: another active task holds the task's unique_key (PT306)."""

    sqlstate = "PT306"


class InvalidArgument(DatabaseError):
    """Bad input to a pgtasks SQL function (SQLSTATE PT1xx): nothing was written."""

    sqlstate = "PT100"


class InvalidSchedule(InvalidArgument):
    """A schedule the database refused (PT401..PT406, PT408..PT410): nothing was written."""

    sqlstate = "PT400"


class ScheduleNotFound(DatabaseError):
    """No schedule has that name (PT407)."""

    sqlstate = "PT407"


class InvalidWorkflow(InvalidArgument):
    """A workflow or dependency the database refused (PT501..PT507: empty graph, bad or
    repeated node name, unknown parent, cycle, bad on_parent_failure, bad node value,
    parent already failed): nothing was written."""

    sqlstate = "PT500"


class WorkflowNotFound(DatabaseError):
    """No workflow has that id (PT508)."""

    sqlstate = "PT508"


class ParentNotDone(DatabaseError):
    """retry_task of a task whose parent ended FAILED or CANCELLED (PT510): retry the
    parent, which revives its dependents."""

    sqlstate = "PT510"


class WorkflowFailed(PgTasksError):
    """Raised by `Client.wait_workflow` for a workflow that ended failed or cancelled.
    `errors` maps node name to error for its FAILED (and cancelled) tasks."""

    def __init__(self, workflow_id: int, state: str, errors: dict[str, str | None]) -> None:
        first = next(iter(errors.items()), None)
        why = f": {first[0]}: {first[1]}" if first else ""
        super().__init__(f"workflow {workflow_id} ended {state}{why}")
        self.workflow_id = workflow_id
        self.state = state
        self.errors = errors


class ParamsValidationError(PgTasksError):
    """Params did not match the task's declared pydantic model."""


class TaskFailed(PgTasksError):
    """Raised by `Client.wait` for a task that ended FAILED."""

    def __init__(self, task_id: int, error: str | None) -> None:
        super().__init__(f"task {task_id} failed: {error}")
        self.task_id = task_id
        self.error = error


class TaskCancelled(PgTasksError):
    """Raised by `Client.wait` for a task that ended CANCELLED."""

    def __init__(self, task_id: int) -> None:
        super().__init__(f"task {task_id} was cancelled")
        self.task_id = task_id


class Undecodable(str):
    """Stands in for a JSON value that Python cannot decode: nested deeper than its
    recursion limit (about 1,000 levels), or holding an integer of more digits than int()
    converts (4,300). The database refuses such values (PT123), but a row written before
    it did, or by hand, can hold one. Without this, the codec's error failed the whole
    statement: every list, page and claim batch that held the row. With it, the row fails
    only itself: readers show this text in the value's place, and a worker fails that task
    alone. A str, so it prints and serialises as what happened."""

    __slots__ = ()


class Retry(Exception):
    """Raise inside a task to ask for another attempt after `delay` seconds (uses a retry)."""

    def __init__(self, delay: float | None = None, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.delay = delay


class SoftTimeLimitExceeded(Exception):
    """Raised inside a task whose soft time limit passed (`soft_timeout`): an async task
    gets it at its next await, a sync one at its next `ctx` call. Catch it to clean up
    before the hard limit (`timeout`) stops the attempt; raised once per attempt. Left
    uncaught, it fails the attempt like any error (retried if retries are left)."""


class PermanentError(Exception):
    """Raise inside a task for an error that no retry can fix: the task goes straight to FAILED."""


class Snooze(BaseException):
    """Raise inside a task (or `await ctx.snooze(seconds)`) to put it back for `seconds`
    without spending a retry: the checkpoints stay, and the history records a snooze.
    `pgtasks.snooze_task` decides; after `settings.max_snoozes` snoozes the task fails.

    A BaseException, like the worker's own hand-back, so a task's `except Exception`
    around its work does not swallow it."""

    def __init__(self, seconds: float = 0.0) -> None:
        secs = float(seconds)
        if not secs >= 0:
            raise ValueError(f"Snooze needs 0 or more seconds, got {seconds!r}")
        super().__init__(secs)
        self.seconds = secs


class EventTimeout(PgTasksError, PermanentError):
    """Raised inside a task by `ctx.wait_for_event` when its timeout passed and the event
    did not come. A PermanentError: left uncaught, the task fails without a retry, since
    another attempt would find the same timeout (the first wait fixed it)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"event {name!r} did not arrive before the wait timed out")
        self.name = name


class EventAfterFinish(TaskAlreadyFinished):
    """send_event to a task that already ended (PT128)."""

    sqlstate = "PT128"


_BY_STATE: dict[str, type[DatabaseError]] = {
    "PT001": IllegalTransition,
    "PT002": LeaseLost,
    "PT003": TaskNotFound,
    "PT004": TaskAlreadyFinished,
    "PT128": EventAfterFinish,
    "PT306": UniqueKeyHeld,
    "PT407": ScheduleNotFound,
    "PT508": WorkflowNotFound,
    "PT510": ParentNotDone,
}


def translate(exc: BaseException) -> BaseException:
    """Turn an asyncpg error carrying a PT SQLSTATE into its pgtasks class; others pass through."""
    state: Any = getattr(exc, "sqlstate", None)
    if not isinstance(state, str) or not state.startswith("PT"):
        return exc
    cls = _BY_STATE.get(state) or (
        InvalidArgument
        if state.startswith("PT1")
        else InvalidSchedule
        if state.startswith("PT4")
        else InvalidWorkflow
        if state.startswith("PT5")
        else DatabaseError
    )
    message = str(getattr(exc, "message", None) or exc)
    return cls(message, sqlstate=state, hint=getattr(exc, "hint", None))
