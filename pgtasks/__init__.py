"""pgtasks: a task queue and long-running-task framework that lives inside PostgreSQL."""

from __future__ import annotations

from pgtasks.client import Client, SubmitResult, TaskInfo, TaskLog
from pgtasks.context import SyncTaskContext, TaskContext
from pgtasks.errors import (
    ConfigurationError,
    DatabaseError,
    IllegalTransition,
    InvalidArgument,
    InvalidWorkflow,
    LeaseLost,
    ParamsValidationError,
    ParentNotDone,
    PermanentError,
    PgTasksError,
    Retry,
    TaskAlreadyFinished,
    TaskCancelled,
    TaskFailed,
    TaskNotFound,
    UniqueKeyHeld,
    WorkflowFailed,
    WorkflowNotFound,
)
from pgtasks.schedules import Schedule, schedule
from pgtasks.sync import SyncClient
from pgtasks.task import BaseTask, Registry, registry, task_register
from pgtasks.worker import Worker
from pgtasks.workflows import (
    ParentFailure,
    SubmittedWorkflow,
    chain,
    chord,
    group,
    task_node,
)

__all__ = [
    "BaseTask",
    "Client",
    "ConfigurationError",
    "DatabaseError",
    "IllegalTransition",
    "InvalidArgument",
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
    "SubmitResult",
    "SubmittedWorkflow",
    "SyncClient",
    "SyncTaskContext",
    "TaskAlreadyFinished",
    "TaskCancelled",
    "TaskContext",
    "TaskFailed",
    "TaskInfo",
    "TaskLog",
    "TaskNotFound",
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
__version__ = "0.1.0"
