"""pgtasks: a task queue and long-running-task framework that lives inside PostgreSQL.

Everything an application uses is importable from here: declaring tasks (`task_register`,
`BaseTask`, `schedule`), submitting and inspecting them (`Client`, `SyncClient`),
workflows (`chain`, `group`, `chord`), running them (`Worker`) and the typed errors.
"""

from __future__ import annotations

from importlib import metadata as _metadata

from pgtasks.client import Client, SubmitResult, TaskInfo, TaskLog
from pgtasks.context import StepError, SyncTaskContext, TaskContext
from pgtasks.errors import (
    ConfigurationError,
    DatabaseError,
    EmbeddedServerError,
    EventAfterFinish,
    EventTimeout,
    IllegalTransition,
    InvalidArgument,
    InvalidSchedule,
    InvalidWorkflow,
    LeaseLost,
    ParamsValidationError,
    ParentNotDone,
    PermanentError,
    PgTasksError,
    Retry,
    ScheduleNotFound,
    Snooze,
    SoftTimeLimitExceeded,
    TaskAlreadyFinished,
    TaskCancelled,
    TaskFailed,
    TaskNotFound,
    Undecodable,
    UniqueKeyHeld,
    WorkflowFailed,
    WorkflowNotFound,
)
from pgtasks.registration import Registry, Schedule, registry
from pgtasks.schedules import schedule
from pgtasks.sync import SyncClient
from pgtasks.task import BaseTask, TaskFunction, task_register
from pgtasks.worker import Worker
from pgtasks.workflows import (
    ChildFailure,
    ParentFailure,
    SubmittedWorkflow,
    chain,
    chord,
    group,
    task_node,
)

__all__ = [
    "BaseTask",
    "ChildFailure",
    "Client",
    "ConfigurationError",
    "DatabaseError",
    "EmbeddedServerError",
    "EventAfterFinish",
    "EventTimeout",
    "IllegalTransition",
    "InvalidArgument",
    "InvalidSchedule",
    "InvalidWorkflow",
    "LeaseLost",
    "ParamsValidationError",
    "ParentFailure",
    "ParentNotDone",
    "PermanentError",
    "PgTasksError",
    "Registry",
    "Retry",
    "Schedule",
    "ScheduleNotFound",
    "Snooze",
    "SoftTimeLimitExceeded",
    "StepError",
    "SubmitResult",
    "SubmittedWorkflow",
    "SyncClient",
    "SyncTaskContext",
    "TaskAlreadyFinished",
    "TaskCancelled",
    "TaskContext",
    "TaskFailed",
    "TaskFunction",
    "TaskInfo",
    "TaskLog",
    "TaskNotFound",
    "Undecodable",
    "UniqueKeyHeld",
    "Worker",
    "WorkflowFailed",
    "WorkflowNotFound",
    "chain",
    "chord",
    "group",
    "registry",
    "schedule",
    "task_node",
    "task_register",
]
try:
    #: The installed distribution's version (pyproject.toml is the one place it is written).
    __version__ = _metadata.version("pgtasks")
except _metadata.PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"
