"""`manage.py pgtasks_worker`: pgtasks' worker, running this project's Django tasks.

It registers a pgtasks type for every Django task of one TASKS backend
(pgtasks.contrib.django.worker), then runs `pgtasks worker` itself on the database that
backend uses: every option of that command is accepted here with the same name, default,
`PGTASKS_*` variable and meaning, read from its definition (so the two never drift).
"""

from __future__ import annotations

import argparse
from typing import Any

import asyncpg
import click
from django.core.management.base import BaseCommand, CommandError, CommandParser

from pgtasks.cli import cli, import_app
from pgtasks.cli import worker as worker_command
from pgtasks.contrib.django.worker import backend_for, register
from pgtasks.errors import PgTasksError
from pgtasks.registration import registry

# Options of `pgtasks worker` this command sets itself: --app is the module that did the
# registering (this one); --verbose is Django's -v 3 here (its name is too close to
# Django's --verbosity).
_OWN = {"app", "verbose"}


def _worker_options() -> list[click.Option]:
    return [p for p in worker_command.params if isinstance(p, click.Option) and p.name not in _OWN]


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
        for option in _worker_options():
            names = [o for o in option.opts if o.startswith("--")]
            help_text = (option.help or "").replace("%", "%%")
            if option.envvar:
                help_text += f" [env: {option.envvar}]"
            kind: dict[str, Any] = (
                {"action": "store_true"}
                if option.is_flag
                else {"metavar": (option.name or "").upper()}
            )
            try:
                parser.add_argument(
                    *names, dest=f"w_{option.name}", default=None, help=help_text, **kind
                )
            except argparse.ArgumentError:  # a name Django's own options already took
                continue

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            self._run(options)
        except click.ClickException as exc:
            raise CommandError(exc.format_message()) from exc
        except PgTasksError as exc:
            raise CommandError(str(exc)) from exc
        except asyncpg.PostgresError as exc:
            raise CommandError(f"database: {exc}") from exc
        except (OSError, asyncpg.InterfaceError) as exc:
            raise CommandError(f"cannot reach the database: {exc}") from exc

    def _run(self, options: dict[str, Any]) -> None:
        alias = options["backend"]
        backend = backend_for(alias)
        for module in options["app"]:
            import_app(module)
        names = register(alias, registry, autodiscover=not options["no_autodiscover"])
        if not names:
            raise PgTasksError(
                f"no Django task uses the TASKS backend {alias!r}; define them with @task in "
                "an installed app's tasks module, or name their module with --app"
            )
        if options["verbosity"] >= 2:
            self.stderr.write(f"running {len(names)} Django task types: {', '.join(names)}")
        url = options["database_url"] or backend.worker_database_url()
        argv = ["--database-url", url, "worker", "--app", __name__]
        for option in _worker_options():
            value = options.get(f"w_{option.name}")
            if value is None:
                continue
            flag = next(o for o in option.opts if o.startswith("--"))
            argv += [flag] if option.is_flag else [flag, str(value)]
        if options["verbosity"] >= 3 and options.get("w_log_level") is None:
            argv.append("--verbose")  # -v 3: the worker's debug log too
        cli.main(args=argv, prog_name="manage.py pgtasks_worker", standalone_mode=False)
