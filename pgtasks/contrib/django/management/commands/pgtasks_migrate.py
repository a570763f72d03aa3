"""`manage.py pgtasks_migrate`: `pgtasks migrate` on the database of a TASKS backend.

Creates or upgrades the pgtasks schema, beside `manage.py migrate` in a release step; safe
to repeat, concurrently and while workers run (docs/operations.md, "Upgrading").
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from pgtasks.cli import migrate as migrate_command
from pgtasks.contrib.django.management import _click
from pgtasks.contrib.django.worker import backend_for
from pgtasks.errors import PgTasksError


class Command(BaseCommand):
    help = (
        "Create or upgrade the pgtasks schema in the database of a pgtasks TASKS backend "
        "(the options of `pgtasks migrate`)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--backend",
            default="default",
            help="The TASKS alias of the pgtasks backend (default: default).",
        )
        parser.add_argument(
            "--database-url",
            default=None,
            help="The database URL (default: the backend's, from DATABASES).",
        )
        _click.add_options(parser, migrate_command, ())

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            url = options["database_url"] or backend_for(options["backend"]).worker_database_url()
        except (PgTasksError, ImproperlyConfigured) as exc:
            raise CommandError(str(exc)) from exc
        argv = _click.given(migrate_command, (), options)
        _click.run(url, "migrate", argv, "manage.py pgtasks_migrate")
