"""`manage.py pgtasks_worker`: pgtasks' worker, running this project's Django tasks.

It registers a pgtasks type for every Django task of one TASKS backend
(pgtasks.contrib.django.worker), then runs `pgtasks worker` itself on the database that
backend uses: every option of that command is accepted here with the same name, default,
`PGTASKS_*` variable and meaning.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from pgtasks.cli import import_app
from pgtasks.cli import worker as worker_command
from pgtasks.contrib.django.management import _click
from pgtasks.contrib.django.worker import backend_for, register
from pgtasks.errors import PgTasksError
from pgtasks.registration import registry

# Options of `pgtasks worker` this command sets itself: --app is the module that did the
# registering (this one); --verbose is Django's -v 3 here (its name is too close to
# Django's --verbosity).
_OWN = {"app", "verbose"}


class Command(BaseCommand):
    help = (
        "Run a pgtasks worker for this project's Django tasks (the options of `pgtasks "
        "worker`; each also from its PGTASKS_* variable). SIGINT/SIGTERM drain and hand "
        "unfinished tasks back."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--backend",
            default="default",
            help="The TASKS alias of the pgtasks backend whose tasks to run (default: default).",
        )
        parser.add_argument(
            "--database-url",
            default=None,
            help="The worker's database URL (default: the backend's, from DATABASES).",
        )
        parser.add_argument(
            "--app",
            action="append",
            default=[],
            metavar="MODULE",
            help="Also import this module (dotted name or .py file): Django tasks outside "
            "the apps' tasks modules, or pgtasks' own @task_register tasks. Repeatable.",
        )
        parser.add_argument(
            "--no-autodiscover",
            action="store_true",
            help="Do not import the tasks module of every installed app.",
        )
        _click.add_options(parser, worker_command, _OWN)

    def handle(self, *args: Any, **options: Any) -> None:
        alias = options["backend"]
        try:
            backend = backend_for(alias)
            for module in options["app"]:
                import_app(module)
            names = register(alias, registry, autodiscover=not options["no_autodiscover"])
            url = options["database_url"] or backend.worker_database_url()
        except (PgTasksError, ImproperlyConfigured) as exc:
            raise CommandError(str(exc)) from exc
        if not names:
            raise CommandError(
                f"no Django task uses the TASKS backend {alias!r}; define them with @task in "
                "an installed app's tasks module, or name their module with --app"
            )
        if options["verbosity"] >= 2:
            self.stderr.write(f"running {len(names)} Django task types: {', '.join(names)}")
        argv = ["--app", __name__, *_click.given(worker_command, _OWN, options)]
        if options["verbosity"] >= 3 and options.get("click_log_level") is None:
            argv.append("--verbose")  # -v 3: the worker's debug log too
        _click.run(url, "worker", argv, "manage.py pgtasks_worker")
