"""pgtasks as a backend of Django's Tasks framework (`pip install 'pgtasks[django]'`).

    INSTALLED_APPS = [..., "pgtasks.contrib.django"]     # the pgtasks_worker command
    TASKS = {"default": {"BACKEND": "pgtasks.contrib.django.PgTasksBackend"}}

Tasks are Django's (`from django.tasks import task`, or `django_tasks` on Django 5.2);
`manage.py pgtasks_worker` runs them. docs/django.md is the guide.
"""

from __future__ import annotations

from pgtasks.contrib.django.backend import PgTasksBackend

__all__ = ["PgTasksBackend"]
