"""The Django app that brings `manage.py pgtasks_worker`."""

from __future__ import annotations

from django.apps import AppConfig


class PgTasksConfig(AppConfig):
    """`"pgtasks.contrib.django"` in INSTALLED_APPS; its label is `pgtasks`."""

    name = "pgtasks.contrib.django"
    label = "pgtasks"
    verbose_name = "pgtasks"
