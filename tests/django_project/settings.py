"""Settings of the test project. The database is PGTASKS_TEST_DJANGO_DSN (a postgresql://
URL); the test moves Django's connection to each test's own database."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlsplit


def database(dsn: str, **options: Any) -> dict[str, Any]:
    """A DATABASES entry for a postgresql:// URL."""
    url = urlsplit(dsn)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(url.path.lstrip("/")),
        "USER": unquote(url.username or ""),
        "PASSWORD": unquote(url.password or ""),
        "HOST": url.hostname or "",
        "PORT": str(url.port or ""),
        "OPTIONS": options,
    }


SECRET_KEY = "tests-only"
DEBUG = False
ALLOWED_HOSTS = ["testserver"]
USE_TZ = True
ROOT_URLCONF = "tests.django_project.urls"
INSTALLED_APPS = ["pgtasks.contrib.django", "tests.django_project.shop"]
MIDDLEWARE: list[str] = []
DATABASES = {
    "default": database(os.environ.get("PGTASKS_TEST_DJANGO_DSN", "postgresql:///unset")),
}
TASKS = {
    "default": {
        "BACKEND": "pgtasks.contrib.django.PgTasksBackend",
        "QUEUES": ["default", "emails"],
        # One retry: a task that always fails ends FAILED after two attempts.
        "OPTIONS": {"MAX_RETRIES": 1},
    },
}
