"""A `pgtasks` subcommand as a Django management command: its click options become the
command's argparse options (same names, defaults, PGTASKS_* variables and help, read from
the click definition so the two never drift), and its errors Django's CommandError (one
line, exit status 1), as `pgtasks` itself prints them."""

from __future__ import annotations

import argparse
from collections.abc import Collection
from typing import Any

import asyncpg
import click
from django.core.management.base import CommandError

from pgtasks.cli import cli
from pgtasks.errors import PgTasksError


def _options(command: click.Command, own: Collection[str]) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option) and p.name not in own]


def add_options(
    parser: argparse.ArgumentParser, command: click.Command, own: Collection[str]
) -> None:
    """The click command's options, but those named in `own`, on the argparse parser."""
    for option in _options(command, own):
        names = [o for o in option.opts if o.startswith("--")]
        help_text = (option.help or "").replace("%", "%%")
        if option.show_default and option.default is not None and not option.is_flag:
            help_text += f" (default: {option.default})"
        if option.envvar:
            help_text += f" [env: {option.envvar}]"
        kind: dict[str, Any] = (
            {"action": "store_true"} if option.is_flag else {"metavar": (option.name or "").upper()}
        )
        try:
            parser.add_argument(
                *names, dest=f"click_{option.name}", default=None, help=help_text, **kind
            )
        except argparse.ArgumentError:  # a name Django's own options already took
            continue


def given(command: click.Command, own: Collection[str], options: dict[str, Any]) -> list[str]:
    """The click arguments for the options the user gave (click applies the defaults and
    the PGTASKS_* variables to the rest)."""
    argv: list[str] = []
    for option in _options(command, own):
        value = options.get(f"click_{option.name}")
        if value is None:
            continue
        flag = next(o for o in option.opts if o.startswith("--"))
        argv += [flag] if option.is_flag else [flag, str(value)]
    return argv


def run(url: str, subcommand: str, argv: list[str], prog_name: str) -> None:
    """`pgtasks --database-url URL SUBCOMMAND ARGV...` in this process."""
    try:
        cli.main(
            args=["--database-url", url, subcommand, *argv],
            prog_name=prog_name,
            standalone_mode=False,
        )
    except click.ClickException as exc:
        raise CommandError(exc.format_message()) from exc
    except PgTasksError as exc:
        raise CommandError(str(exc)) from exc
    except asyncpg.PostgresError as exc:
        raise CommandError(f"database: {exc}") from exc
    except (OSError, asyncpg.InterfaceError) as exc:
        raise CommandError(f"cannot reach the database: {exc}") from exc
