"""pgtasks: a task queue and long-running-task framework that lives inside PostgreSQL."""

from __future__ import annotations

from pgtasks.client import Client, SubmitResult, TaskInfo, TaskLog
from pgtasks.context import SyncTaskContext, TaskContext
from pgtasks.errors import (
    ConfigurationError,
    DatabaseError,
    IllegalTransition,
    InvalidArgument,
    LeaseLost,
    ParamsValidationError,
    PermanentError,
    PgTasksError,
    Retry,
    TaskAlreadyFinished,
    TaskCancelled,
    TaskFailed,
    TaskNotFound,
    UniqueKeyHeld,
)
from pgtasks.schedules import Schedule, schedule
from pgtasks.sync import SyncClient
from pgtasks.task import BaseTask, Registry, registry, task_register
from pgtasks.worker import Worker

__all__ = [
    "BaseTask",
    "Client",
    "ConfigurationError",
    "DatabaseError",
    "IllegalTransition",
    "InvalidArgument",
    "LeaseLost",
    "ParamsValidationError",
    "PermanentError",
    "PgTasksError",
    "Registry",
    "Retry",
    "Schedule",
    "SubmitResult",
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
    "registry",
    "schedule",
    "task_register",
]
__version__ = "0.1.0"
