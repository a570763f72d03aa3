"""pgtasks as a backend of Django's Tasks framework (`pip install 'pgtasks[django]'`).

    INSTALLED_APPS = [..., "pgtasks.contrib.django"]     # the pgtasks_worker command
    TASKS = {"default": {"BACKEND": "pgtasks.contrib.django.PgTasksBackend"}}

Tasks are Django's (`from django.tasks import task`, or `django_tasks` on Django 5.2);
`manage.py pgtasks_worker` runs them. docs/django.md is the guide.
"""

from __future__ import annotations

from pgtasks.contrib.django.backend import PgTasksBackend

__all__ = ["PgTasksBackend", "database_url"]


def database_url(backend: str = "default") -> str:
    """The postgresql:// URL of the database the TASKS backend `backend` uses, for pgtasks'
    own tools: `pgtasks.fastapi.lifespan(url)` (the dashboard beside Django), a Client."""
    from pgtasks.contrib.django.worker import backend_for

    return backend_for(backend).worker_database_url()
