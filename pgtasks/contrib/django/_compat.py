"""The Tasks framework of this Django: `django.tasks` (Django 6 and later) or the
`django_tasks` backport (Django 5.2, `pip install django-tasks`), under one set of names.

The type checker reads the backport, which ships type hints; Django 6's own module has the
same classes and fields (checked by tests/test_django.py on both).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from django_tasks import TaskContext, TaskResult, TaskResultStatus, task_backends
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import Task, TaskError
    from django_tasks.exceptions import InvalidTaskError as InvalidTask
    from django_tasks.exceptions import TaskResultDoesNotExist
    from django_tasks.signals import task_enqueued
    from django_tasks.utils import normalize_json
else:
    try:
        from django.tasks import TaskContext, TaskResult, TaskResultStatus, task_backends
        from django.tasks.backends.base import BaseTaskBackend
        from django.tasks.base import Task, TaskError
        from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
        from django.tasks.signals import task_enqueued
        from django.utils.json import normalize_json
    except ImportError:  # Django 5.2: the backport
        try:
            from django_tasks import TaskContext, TaskResult, TaskResultStatus, task_backends
            from django_tasks.backends.base import BaseTaskBackend
            from django_tasks.base import Task, TaskError
            from django_tasks.exceptions import InvalidTaskError as InvalidTask
            from django_tasks.exceptions import TaskResultDoesNotExist
            from django_tasks.signals import task_enqueued
            from django_tasks.utils import normalize_json

            # What django.tasks does on import and the backport only in its AppConfig
            # (which INSTALLED_APPS then needs): register the system check that calls
            # each backend's check(). Its signals module, imported above, brings the
            # log lines and the reset of the backends when a test overrides TASKS.
            importlib.import_module("django_tasks.checks")
        except ImportError as exc:
            from django.core.exceptions import ImproperlyConfigured

            raise ImproperlyConfigured(
                "pgtasks.contrib.django needs Django's Tasks framework: Django 6 or later, "
                "or Django 5.2 with the backport (pip install 'pgtasks[django]')"
            ) from exc

__all__ = [
    "BaseTaskBackend",
    "InvalidTask",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultDoesNotExist",
    "TaskResultStatus",
    "normalize_json",
    "task_backends",
    "task_enqueued",
]
