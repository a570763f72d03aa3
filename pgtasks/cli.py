"""`pgtasks` on the command line. Errors print one line and exit non-zero, never a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import json
import logging
import os
import re
import sys
from collections import deque
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import click
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from pgtasks.client import STATUSES, Client, TaskInfo, TaskLog
from pgtasks.config import (
    ENV_READ_URL,
    ENV_URL,
    database_url,
    embedded_root,
    read_lag_threshold,
    resolve_url,
    using_message,
)
from pgtasks.embedded import EmbeddedPostgres
from pgtasks.errors import PgTasksError, TaskNotFound
from pgtasks.migrations import LockPolicy, migrate_url
from pgtasks.worker import Worker
from pgtasks.worker.worker import (
    DEFAULT_CONCURRENCY,
    DEFAULT_TASK_POOL_SIZE,
    DEFAULT_THREADS,
)

T = TypeVar("T")
# Piped output (make run, CI logs) gets room for its tables instead of rich's 80 columns.
console = Console(width=None if sys.stdout.isatty() else 130)
STATUS_STYLE = {
    "WAITING": "blue",
    "PENDING": "cyan",
    "RUNNING": "yellow",
    "COMMIT": "magenta",
    "DONE": "green",
    "FAILED": "red",
    "CANCELLED": "dim",
}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _say(line: str) -> None:
    """A note for the person at the terminal, on stderr: stdout stays the command's output."""
    click.echo(f"pgtasks: {line}", err=True)


def _url(ctx: click.Context) -> str:
    return database_url(ctx.obj.get("url"), announce=_say)


async def _with_client(ctx: click.Context, fn: Callable[[Client], Coroutine[Any, Any, T]]) -> T:
    async with Client(await resolve_url(ctx.obj.get("url"), announce=_say)) as client:
        return await fn(client)


async def _with_reader(ctx: click.Context, fn: Callable[[Client], Coroutine[Any, Any, T]]) -> T:
    """`_with_client` for a command that only reads: on the replica when one is given
    (--read-database-url), first saying on stderr how far behind its primary it is when
    that is more than PGTASKS_READ_LAG_THRESHOLD seconds (the database compares)."""
    read_url = ctx.obj.get("read_url")
    if not read_url:
        return await _with_client(ctx, fn)
    async with Client(read_url) as client:
        lag = await client.replica_lag(read_lag_threshold())
        if lag.stale:
            behind = "an unknown time" if lag.lag_seconds is None else f"{lag.lag_seconds:.1f} s"
            cut = "" if lag.receiving else ", and is not receiving from it"
            _say(f"read from a replica {behind} behind its primary{cut}")
        return await fn(client)


def _status(s: str) -> str:
    return f"[{STATUS_STYLE.get(s, 'white')}]{s}[/]"


def _tasks_table(tasks: list[TaskInfo], title: str | None = None) -> Table:
    table = Table(title=title)
    for col in ("id", "type", "queue", "status", "attempt", "progress", "created"):
        table.add_column(col, no_wrap=True)
    table.add_column("result / error", no_wrap=True, overflow="ellipsis", max_width=36)
    for t in tasks:
        progress = f"{t.percent:.0f}%" if t.percent is not None else ""
        outcome = t.error if t.status in ("FAILED", "COMMIT") and t.error else t.result
        table.add_row(
            str(t.id),
            t.task_type,
            t.queue,
            _status(t.status),
            str(t.attempt),
            progress,
            t.created_at.strftime("%H:%M:%S"),
            ""
            if outcome is None
            else str(outcome if isinstance(outcome, str) else json.dumps(outcome))[:60],
        )
    return table


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    None,
    "--version",
    "-V",
    package_name="pgtasks",
    prog_name="pgtasks",
    message="%(prog)s %(version)s",
)
@click.option(
    "--database-url",
    envvar=ENV_URL,
    help=f"PostgreSQL DSN (or ${ENV_URL}). Without one, the embedded server that "
    "`pgtasks db start` created here or in a parent folder.",
)
@click.option(
    "--read-database-url",
    envvar=ENV_READ_URL,
    help=f"A replica (hot standby) to read from (or ${ENV_READ_URL}): the commands that "
    "only read (ls, status, stats, logs...) and `serve`'s pages and GET endpoints. "
    "Writes go to --database-url.",
)
@click.pass_context
def cli(ctx: click.Context, database_url: str | None, read_database_url: str | None) -> None:
    """pgtasks: a task queue that lives inside PostgreSQL."""
    ctx.ensure_object(dict)
    ctx.obj["url"] = database_url
    ctx.obj["read_url"] = read_database_url


# -- embedded server ---------------------------------------------------------------------


@cli.group()
def db() -> None:
    """Manage the embedded PostgreSQL: in $PGTASKS_HOME, else the nearest .pgtasks folder
    here or in a parent, up to the project root (pyproject.toml or .git); `start` creates
    ./.pgtasks when there is none."""


@db.command("start")
def db_start() -> None:
    """Create the embedded server (or start or reuse the existing one), bring its schema up
    to date, and print its URL."""
    server = EmbeddedPostgres(embedded_root())
    created = not server.exists
    url = server.start()
    run(migrate_url(url))
    _say(using_message(server.root, created=created))
    click.echo(url)


@db.command("stop")
def db_stop() -> None:
    """Stop the embedded server."""
    stopped = EmbeddedPostgres(embedded_root()).stop()
    click.echo("stopped" if stopped else "not running")


@db.command("status")
def db_status() -> None:
    """Say whether the embedded server runs, and where."""
    server = EmbeddedPostgres(embedded_root())
    if not server.exists:
        click.echo(f"no embedded PostgreSQL in {server.root} (`pgtasks db start` creates one)")
        sys.exit(3)
    st = server.status()
    click.echo(st.describe())
    if not st.running:
        sys.exit(3)


@db.command("url")
def db_url() -> None:
    """Print the DSN of the running embedded server (for psql, asyncpg, psycopg)."""
    click.echo(EmbeddedPostgres(embedded_root()).url())


# -- schema ------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--lock-timeout",
    envvar="PGTASKS_MIGRATE_LOCK_TIMEOUT",
    show_envvar=True,
    type=click.FloatRange(min=0, min_open=True),
    default=LockPolicy.timeout,
    show_default=True,
    help="Seconds a migration may wait for one lock before it is rolled back and retried "
    "(what a claim queued behind it can wait).",
)
@click.option(
    "--lock-attempts",
    envvar="PGTASKS_MIGRATE_LOCK_ATTEMPTS",
    show_envvar=True,
    type=click.IntRange(min=1),
    default=LockPolicy.attempts,
    show_default=True,
    help="Tries of a migration whose locks are not granted in time, before it gives up and "
    "names the blocking session.",
)
@click.pass_context
def migrate(ctx: click.Context, lock_timeout: float, lock_attempts: int) -> None:
    """Create or upgrade the pgtasks schema (safe to run any number of times, concurrently,
    and while workers run: see docs/operations.md, "Upgrading")."""
    locks = LockPolicy(timeout=lock_timeout, attempts=lock_attempts)
    applied = run(migrate_url(_url(ctx), locks=locks, report=lambda s: click.echo(s, err=True)))
    if applied:
        for m in applied:
            click.echo(f"applied {m.version:04d}_{m.name}")
    else:
        click.echo("schema is up to date")


# -- worker ------------------------------------------------------------------------------


def import_app(spec: str) -> None:
    """Import the module (dotted name or .py path) whose import registers the task types."""
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise PgTasksError(f"--app {spec}: no such file")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        if module_spec is None or module_spec.loader is None:
            raise PgTasksError(f"--app {spec}: cannot import this file")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[path.stem] = module
        module_spec.loader.exec_module(module)
        return
    sys.path.insert(0, str(Path.cwd()))
    try:
        importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        raise PgTasksError(f"--app {spec}: module not found ({exc.name})") from exc


def env_option(*decls: str, env: str, **kw: Any) -> Callable[[Any], Any]:
    """A click option that can also come from $PGTASKS_<env>; the flag wins, and --help
    names the variable."""
    return click.option(*decls, envvar=f"PGTASKS_{env}", show_envvar=True, **kw)


def setup_logging(level: str, fmt: str) -> None:
    """Text for people, JSON (one object a line) for log collectors."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created).astimezone().isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


LOG_LEVELS = click.Choice(["debug", "info", "warning", "error"], case_sensitive=False)
log_level_option = env_option(
    "--log-level", env="LOG_LEVEL", default="info", show_default=True, type=LOG_LEVELS
)
log_format_option = env_option(
    "--log-format",
    env="LOG_FORMAT",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"]),
    help="json: one JSON object a line, for log collectors.",
)


@cli.command()
@env_option(
    "--app", "app", env="APP", required=True, help="Module or .py file that registers the tasks."
)
@env_option(
    "--queues",
    env="QUEUES",
    default=None,
    help="Comma-separated queues to take work from (default: all).",
)
@env_option(
    "--concurrency",
    env="CONCURRENCY",
    default=DEFAULT_CONCURRENCY,
    show_default=True,
    type=click.IntRange(min=1),
    help="Tasks run at once (async tasks: one coroutine each).",
)
@env_option(
    "--threads",
    env="THREADS",
    default=DEFAULT_THREADS,
    show_default=True,
    type=click.IntRange(min=1),
    help="Of those, at most this many sync (def) tasks, one thread each.",
)
@env_option(
    "--prefetch",
    env="PREFETCH",
    default=None,
    type=click.IntRange(min=0),
    help="Tasks claimed beyond the free slots while tasks are short, so a freed slot never "
    "waits for a claim (default: as many as --concurrency; 0 with sync task types).",
)
@env_option(
    "--task-pool-size",
    env="TASK_POOL_SIZE",
    default=DEFAULT_TASK_POOL_SIZE,
    show_default=True,
    type=click.IntRange(min=1),
    help="Connections of ctx.pool, for tasks' own queries (opened on first use).",
)
@env_option(
    "--poll-interval",
    env="POLL_INTERVAL",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.01),
)
@env_option(
    "--lease",
    env="LEASE",
    default=None,
    type=click.FloatRange(min=0.1),
    help="Seconds a claim is valid without a heartbeat (default: the database's "
    "settings.default_lease, 60 s unless configured).",
)
@env_option(
    "--no-listen",
    env="NO_LISTEN",
    is_flag=True,
    help="Poll only (e.g. behind PgBouncer in transaction mode).",
)
@env_option(
    "--no-prepared",
    env="NO_PREPARED",
    is_flag=True,
    help="No named prepared statements (statement_cache_size=0), for transaction poolers.",
)
@env_option(
    "--pgbouncer",
    env="PGBOUNCER",
    is_flag=True,
    help="Behind PgBouncer in transaction mode: same as --no-listen --no-prepared.",
)
@env_option(
    "--burst",
    env="BURST",
    is_flag=True,
    help="Run what is ready now, then exit (0); tasks scheduled later stay waiting.",
)
@env_option(
    "--grace",
    env="GRACE",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds to let tasks finish on SIGTERM.",
)
@env_option(
    "--metrics-port",
    env="METRICS_PORT",
    default=None,
    type=click.IntRange(min=1, max=65535),
    help="Serve this worker's own Prometheus metrics on 127.0.0.1:PORT/ (needs pgtasks[web]).",
)
@log_level_option
@log_format_option
@click.option("--verbose", "-v", is_flag=True, help="Same as --log-level debug.")
@click.pass_context
def worker(
    ctx: click.Context,
    app: str,
    queues: str | None,
    concurrency: int,
    threads: int,
    prefetch: int | None,
    task_pool_size: int,
    poll_interval: float,
    lease: float | None,
    no_listen: bool,
    no_prepared: bool,
    pgbouncer: bool,
    burst: bool,
    grace: float,
    metrics_port: int | None,
    log_level: str,
    log_format: str,
    verbose: bool,
) -> None:
    """Run tasks. SIGINT/SIGTERM stop claiming, drain, and hand unfinished tasks back.

    Every option can also come from its PGTASKS_* variable (shown below); a flag wins.
    """
    setup_logging("debug" if verbose else log_level, log_format)
    import_app(app)
    w = Worker(
        ctx.obj.get("url"),
        queues=[q.strip() for q in queues.split(",") if q.strip()] if queues else None,
        concurrency=concurrency,
        threads=threads,
        prefetch=prefetch,
        task_pool_size=task_pool_size,
        poll_interval=poll_interval,
        lease=lease,
        listen=not (no_listen or pgbouncer),
        statement_cache_size=0 if (no_prepared or pgbouncer) else 100,
        burst=burst,
        shutdown_grace=grace,
    )
    if metrics_port is not None:
        try:
            from pgtasks.web.worker_metrics import serve_worker_metrics
        except ImportError as exc:
            raise PgTasksError(
                "--metrics-port needs the web extra: pip install 'pgtasks[web]'"
            ) from exc
        serve_worker_metrics(w, metrics_port)
        logging.getLogger("pgtasks.worker").info(
            "worker metrics on http://127.0.0.1:%d/", metrics_port
        )
    run(w.run(install_signal_handlers=True))


# -- HTTP API ----------------------------------------------------------------------------


@cli.command()
@env_option(
    "--host",
    env="HOST",
    default="127.0.0.1",
    show_default=True,
    help="Interface to bind; 0.0.0.0 for every one (set PGTASKS_API_TOKEN first).",
)
@env_option("--port", env="PORT", default=8000, show_default=True, type=click.IntRange(1, 65535))
@log_level_option
@log_format_option
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, log_level: str, log_format: str) -> None:
    """The web dashboard (/), the HTTP API (/api, OpenAPI at /docs) and /metrics.
    Needs pgtasks[web].

    PGTASKS_API_TOKEN makes writes (and reads, unless PGTASKS_API_OPEN_READS=true) need
    `Authorization: Bearer <token>`.
    """
    try:
        import uvicorn

        from pgtasks.web import WebSettings, create_app
        from pgtasks.web.server import config_options
    except ImportError as exc:
        raise PgTasksError("pgtasks serve needs the web extra: pip install 'pgtasks[web]'") from exc
    setup_logging(log_level, log_format)
    read = {"read_database_url": ctx.obj["read_url"]} if ctx.obj.get("read_url") else {}
    settings = WebSettings(database_url=_url(ctx), host=host, **read)
    where = "this machine only" if host in ("127.0.0.1", "localhost", "::1") else "the network"
    click.echo(
        f"pgtasks dashboard on http://{host}:{port}/ ({where}; API at /api, docs at /docs, "
        "metrics at /metrics)"
    )
    if settings.read_database_url:
        click.echo(
            "pages, GET endpoints and /metrics read from the replica of --read-database-url; "
            "writes and task streams go to the primary"
        )
    if settings.api_token is None:
        hosts = settings.host_names()
        named = "any host" if hosts is None else ", ".join(sorted(hosts))
        click.echo(
            "no PGTASKS_API_TOKEN: anyone who reaches this port can submit and cancel "
            f"(requests must name {named}: PGTASKS_ALLOWED_HOSTS)"
        )
    # A bounded graceful shutdown: open SSE streams would otherwise hold it up. The
    # timeouts and limits of config_options keep slow and idle clients from holding
    # connections (pgtasks.web.server).
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=log_level.lower(),
        log_config=None,
        timeout_graceful_shutdown=5,
        **config_options(settings),
    )


# -- tasks -------------------------------------------------------------------------------


@cli.command()
@click.argument("task_type")
@click.option("--params", default="{}", help="JSON object of parameters.")
@click.option("--queue", default=None)
@click.option("--priority", default=None, type=int, help="Higher runs first.")
@click.option("--in", "delay", default=None, type=float, help="Run after this many seconds.")
@click.option("--max-retries", default=None, type=int)
@click.option(
    "--unique-key", default=None, help="No second task while one with this key is active."
)
@click.option(
    "--unique-for", default=None, type=float, help="Keep the unique key taken this many seconds."
)
@click.option("--concurrency-key", default=None, help="Limit running tasks that share this key.")
@click.option(
    "--concurrency-limit", default=None, type=int, help="Running tasks per key (default 1)."
)
@click.option(
    "--idempotency-key",
    default=None,
    help="Safe to send again: a resend prints the first task's id (the key is its unique key;"
    " add --unique-for to keep it after the task ends).",
)
@click.pass_context
def submit(
    ctx: click.Context,
    task_type: str,
    params: str,
    queue: str | None,
    priority: int | None,
    delay: float | None,
    max_retries: int | None,
    unique_key: str | None,
    unique_for: float | None,
    concurrency_key: str | None,
    concurrency_limit: int | None,
    idempotency_key: str | None,
) -> None:
    """Submit a task; prints its id (and "(existing)" when the unique key matched one).

    With --idempotency-key a resend prints just the id, as the first send did, so a
    script that retries after an error it cannot judge reads the same answer."""
    if idempotency_key is not None and unique_key is not None:
        raise PgTasksError(
            "--idempotency-key is the task's unique key: pass it or --unique-key, not both"
        )
    try:
        parsed = json.loads(params)
    except json.JSONDecodeError as exc:
        raise PgTasksError(f"--params is not valid JSON: {exc.msg} at position {exc.pos}") from exc
    if not isinstance(parsed, dict):
        raise PgTasksError("--params must be a JSON object, e.g. '{\"width\": 10}'")
    task_id = run(
        _with_client(
            ctx,
            lambda c: c.submit(
                task_type,
                parsed,
                queue=queue,
                priority=priority,
                delay=delay,
                max_retries=max_retries,
                unique_key=unique_key,
                unique_for=unique_for,
                concurrency_key=concurrency_key,
                concurrency_limit=concurrency_limit,
                idempotency_key=idempotency_key,
            ),
        )
    )
    resent = idempotency_key is not None
    click.echo(task_id if task_id.created or resent else f"{task_id} (existing)")


@cli.command()
@click.argument("task_id", type=int, required=False)
@click.option(
    "--unique-key", default=None, help="Instead of an id: the newest task submitted with this key."
)
@click.option(
    "--type",
    "task_type",
    default=None,
    help="With --unique-key: of this task type (keys belong to their type; default: any).",
)
@click.pass_context
def status(
    ctx: click.Context, task_id: int | None, unique_key: str | None, task_type: str | None
) -> None:
    """Show one task, its errors and its history: task TASK_ID, or with --unique-key the
    newest task of that key (finished ones included)."""
    if (task_id is None) == (unique_key is None):
        raise click.UsageError("give a TASK_ID or --unique-key KEY (one of them)")
    if task_type is not None and unique_key is None:
        raise click.UsageError("--type goes with --unique-key")

    async def go(c: Client) -> None:
        if unique_key is not None:
            found = await c.find(unique_key=unique_key, task_type=task_type)
            if found is None:
                of_type = f" of type {task_type!r}" if task_type is not None else ""
                raise TaskNotFound(f"no task has unique key {unique_key!r}{of_type}")
            t = found
        else:
            assert task_id is not None  # one of the two, checked above
            t = await c.get(task_id)
        table = Table(show_header=False, title=f"task {t.id}")
        for key, value in t.model_dump().items():
            if value is not None:
                table.add_row(key, _status(value) if key == "status" else str(value))
        console.print(table)
        errors = await c.errors(t.id)
        if errors:
            et = Table(title="errors")
            et.add_column("attempt")
            et.add_column("at")
            et.add_column("error")
            for e in errors:
                et.add_row(str(e["attempt"]), e["at"].strftime("%H:%M:%S"), e["error"])
            console.print(et)
        ht = Table(title="history")
        for col in ("at", "from", "to", "attempt", "worker"):
            ht.add_column(col)
        for ev in await c.history(t.id):
            ht.add_row(
                ev.at.strftime("%H:%M:%S.%f")[:-3],
                ev.from_status or "",
                _status(ev.to_status),
                str(ev.attempt),
                ev.worker_id or "",
            )
        console.print(ht)

    run(_with_reader(ctx, go))


@cli.command("ls")
@click.option("--status", "status_", default=None, help=", ".join(STATUSES))
@click.option("--queue", default=None)
@click.option("--type", "task_type", default=None)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--before", default=None, type=int, help="Only ids below this one (paging).")
@click.pass_context
def ls(
    ctx: click.Context,
    status_: str | None,
    queue: str | None,
    task_type: str | None,
    limit: int,
    before: int | None,
) -> None:
    """List tasks, newest first."""
    tasks = run(
        _with_reader(
            ctx,
            lambda c: c.list_tasks(
                status=status_, queue=queue, task_type=task_type, limit=limit, before_id=before
            ),
        )
    )
    console.print(_tasks_table(tasks))


@cli.command()
@click.argument("task_id", type=int)
@click.pass_context
def cancel(ctx: click.Context, task_id: int) -> None:
    """Cancel a task (a running one is stopped by its worker)."""
    was = run(_with_client(ctx, lambda c: c.cancel(task_id)))
    click.echo(f"task {task_id} cancelled (was {was})")


@cli.command()
@click.argument("task_id", type=int)
@click.pass_context
def retry(ctx: click.Context, task_id: int) -> None:
    """Run a FAILED or CANCELLED task again."""
    run(_with_client(ctx, lambda c: c.retry(task_id)))
    click.echo(f"task {task_id} is PENDING again")


@cli.command()
@click.pass_context
def stats(ctx: click.Context) -> None:
    """Queue depth and throughput per queue."""

    async def go(c: Client) -> None:
        rows = await c.queue_stats()
        table = Table(title="queues")
        cols = list(rows[0].keys()) if rows else ["queue"]
        for col in cols:
            table.add_column(col)
        for r in rows:
            table.add_row(*("" if r[k] is None else str(r[k]) for k in cols))
        console.print(table)

    run(_with_reader(ctx, go))


# -- flow control (docs/flow-control.md) ---------------------------------------------------

RATE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(text: str) -> tuple[int, timedelta]:
    """'10/s', '100/m', '5/2s' -> (limit, period)."""
    count, sep, period = text.partition("/")
    unit = period.lstrip("0123456789.")
    amount = period[: len(period) - len(unit)] or "1"
    try:
        limit = int(count)
        seconds = float(amount) * RATE_UNITS[unit]
    except (ValueError, KeyError):
        raise PgTasksError(
            f"--rate {text!r}: use COUNT/PERIOD, e.g. 10/s, 100/m, 5/2s (units s, m, h, d)"
        ) from None
    if not sep:
        raise PgTasksError(f"--rate {text!r}: use COUNT/PERIOD, e.g. 10/s")
    return limit, timedelta(seconds=seconds)


@cli.group(invoke_without_command=True)
@click.pass_context
def queues(ctx: click.Context) -> None:
    """Queue settings (pause, max running, rate) next to live counts."""
    if ctx.invoked_subcommand is not None:
        return

    async def go(c: Client) -> None:
        rows = await c.queues()
        table = Table(title="queues")
        # header -> column of pgtasks.queues; "waiting": tasks behind unfinished parents (0018)
        cols = {"queue": "queue", "paused": "paused", "max_running": "max_running",
                "rate_limit": "rate_limit", "rate_period": "rate_period", "ready": "ready",
                "scheduled": "scheduled", "waiting": "waiting_on_parents", "running": "running",
                "recent_starts": "recent_starts"}  # fmt: skip
        for header in cols:
            table.add_column(header)
        for r in rows:
            table.add_row(*(_cell(r[k]) for k in cols.values()))
        console.print(table)

    run(_with_reader(ctx, go))


@queues.command("pause")
@click.argument("queue")
@click.pass_context
def queues_pause(ctx: click.Context, queue: str) -> None:
    """Stop claiming from QUEUE; running tasks finish, submits are accepted."""
    run(_with_client(ctx, lambda c: c.pause_queue(queue)))
    click.echo(f"queue {queue} paused")


@queues.command("resume")
@click.argument("queue")
@click.pass_context
def queues_resume(ctx: click.Context, queue: str) -> None:
    """Claim from QUEUE again."""
    run(_with_client(ctx, lambda c: c.resume_queue(queue)))
    click.echo(f"queue {queue} resumed")


@queues.command("set")
@click.argument("queue")
@click.option("--max-running", default=None, type=int, help="At most N running at once.")
@click.option("--rate", default=None, help="At most COUNT starts per PERIOD, e.g. 10/s.")
@click.pass_context
def queues_set(ctx: click.Context, queue: str, max_running: int | None, rate: str | None) -> None:
    """Replace QUEUE's limits (a limit left out is removed); the pause is kept."""
    limit, period = parse_rate(rate) if rate else (None, None)
    run(
        _with_client(
            ctx,
            lambda c: c.configure_queue(
                queue, max_running=max_running, rate_limit=limit, rate_period=period
            ),
        )
    )
    shown = ", ".join(
        x
        for x in (
            f"max_running {max_running}" if max_running is not None else "",
            f"rate {rate}" if rate else "",
        )
        if x
    )
    click.echo(f"queue {queue}: {shown or 'no limits'}")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, timedelta):
        return f"{value.total_seconds():.1f}s"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


@cli.command()
@click.option("--queue", default=None, help="Only this queue.")
@click.option("--type", "task_type", default=None, help="Only this task type.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.pass_context
def failed(ctx: click.Context, queue: str | None, task_type: str | None, limit: int) -> None:
    """Dead letters: FAILED tasks, newest first, with their last error (pgtasks.failed_tasks).

    `pgtasks status ID` shows one task's whole error history; `pgtasks retry ID` runs it again.
    """

    async def go(c: Client) -> None:
        rows = await c.failed(queue=queue, task_type=task_type, limit=limit)
        table = Table(title=f"failed tasks ({len(rows)}{'+' if len(rows) == limit else ''})")
        for col in ("id", "type", "queue", "attempts", "errors", "failed at"):
            table.add_column(col, no_wrap=True)
        table.add_column("last error", overflow="ellipsis", max_width=70, no_wrap=True)
        for r in rows:
            table.add_row(
                str(r["id"]),
                r["task_type"],
                r["queue"],
                str(r["attempt"]),
                str(r["error_count"]),
                _cell(r["finished_at"]),
                f"[red]{escape((r['error'] or '').splitlines()[0] if r['error'] else '')}[/]",
            )
        console.print(table)

    run(_with_reader(ctx, go))


@cli.command()
@click.option("--all", "show_all", is_flag=True, help="Also workers not seen within their lease.")
@click.pass_context
def workers(ctx: click.Context, show_all: bool) -> None:
    """Workers from the pgtasks.workers view: where they run, what they hold, when last seen.

    A worker not seen within its lease is dead (killed, hung, cut off): its tasks are
    rescued when their leases run out. Dead rows are swept after ten minutes.
    """

    async def go(c: Client) -> None:
        rows = await c.workers(include_dead=show_all)
        table = Table(title=f"workers ({sum(r['alive'] for r in rows)} alive)")
        for col in ("worker", "host", "pid", "queues", "running", "started", "last seen", "state"):
            table.add_column(col, no_wrap=True)
        for r in rows:
            table.add_row(
                r["worker_id"],
                r["host"],
                str(r["pid"]),
                _cell(r["queues"]) or "(all)",
                f"{r['running']}/{r['concurrency']}",
                _cell(r["started_at"]),
                f"{_cell(r['seen_ago'])} ago",
                "[green]alive[/]" if r["alive"] else "[red]dead[/]",
            )
        console.print(table)

    run(_with_reader(ctx, go))


@cli.command()
@click.option("--queue", default=None, help="Only this queue.")
@click.option("--worker", "worker_id", default=None, help="Only this worker (its worker_id).")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(min=1))
@click.pass_context
def active(ctx: click.Context, queue: str | None, worker_id: str | None, limit: int) -> None:
    """What the workers are running now (pgtasks.active_tasks), by worker: each task's
    attempt, how long it has run, its progress and how long its lease has left.

    A worker marked dead stopped heartbeating: its tasks are rescued when their leases run
    out. `pgtasks watch ID` follows one of them live.
    """

    async def go(c: Client) -> None:
        rows = await c.active(queue=queue, worker_id=worker_id, limit=limit)
        more = "+" if len(rows) == limit else ""
        table = Table(title=f"active tasks ({len(rows)}{more})")
        for col in ("worker", "host / pid", "task", "type", "queue", "attempt", "running"):
            table.add_column(col, no_wrap=True)
        table.add_column("progress", no_wrap=True)
        table.add_column("message", overflow="ellipsis", max_width=40, no_wrap=True)
        table.add_column("lease left", no_wrap=True)
        for r in rows:
            if r.host is None:
                where = "[dim](not registered)[/]"
            else:
                where = f"{escape(r.host)} / {r.pid}"
                if r.worker_alive is False:
                    where += " [red]dead[/]"
            if r.progress_total:
                progress = f"{r.percent or 0:.0f}% {r.progress_current or 0}/{r.progress_total}"
            else:
                progress = "" if r.progress_current is None else str(r.progress_current)
            table.add_row(
                escape(r.worker_id),
                where,
                str(r.id),
                escape(r.task_type),
                escape(r.queue),
                str(r.attempt),
                format_duration(timedelta(seconds=round(r.running_for.total_seconds()))),
                progress,
                escape(r.progress_message or ""),
                _cell(r.lease_left),
            )
        console.print(table)

    run(_with_reader(ctx, go))


@cli.command()
@click.pass_context
def types(ctx: click.Context) -> None:
    """Registered task types and the policy a submit of each gets (pgtasks.registered_types).

    Workers register their types when they start; an argument given at submit wins.
    """

    async def go(c: Client) -> None:
        rows = await c.types()
        table = Table(title=f"task types ({len(rows)})")
        cols = ("type", "queue", "priority", "retries", "timeout", "backoff", "by", "updated")
        for col in cols:
            table.add_column(col, no_wrap=True)
        for r in rows:
            table.add_row(
                r["task_type"],
                r["queue"],
                str(r["priority"]),
                str(r["max_retries"]),
                _cell(r["timeout"]),
                _cell(r["backoff_base"]),
                r["registered_by"] or "",
                _cell(r["updated_at"]),
            )
        console.print(table)

    run(_with_reader(ctx, go))


# -- long-running tasks: logs and live progress -----------------------------------------

LEVEL_STYLE = {
    "DEBUG": "dim",
    "INFO": "",
    "WARNING": "yellow",
    "ERROR": "red",
    "CRITICAL": "bold red",
}


def _log_line(line: TaskLog) -> Text:
    """One task log line as text: time, attempt, level, logger, message (never markup)."""
    text = Text()
    text.append(line.at.astimezone().strftime("%H:%M:%S.%f")[:-3], style="dim")
    text.append(f" #{line.attempt} ", style="dim")
    text.append(f"{line.level:<7}", style=LEVEL_STYLE.get(line.level, ""))
    if line.logger:
        text.append(f" {line.logger}:", style="cyan")
    text.append(f" {line.message}")
    return text


def _outcome(info: TaskInfo) -> str:
    value = info.result
    return value if isinstance(value, str) else json.dumps(value)


def _watch_view(info: TaskInfo, recent: deque[TaskLog]) -> RenderableType:
    head = Text.assemble(
        (f"task {info.id} ", "bold"),
        (info.task_type, "cyan"),
        "  ",
        (info.status, STATUS_STYLE.get(info.status, "white")),
        f"  attempt {info.attempt}  retries {info.retries}",
    )
    if info.elapsed is not None:
        head.append(f"  {info.elapsed.total_seconds():.1f}s", style="dim")
    bar = Table.grid(padding=(0, 1))
    bar.add_column(width=40)
    bar.add_column(no_wrap=True)
    total = info.progress_total
    current = info.progress_current or 0
    if total:
        count = f"{info.percent or 0:5.1f}%  {current}/{total}"
    else:
        count = f"{current}" if info.progress_current is not None else ""
    bar.add_row(
        ProgressBar(total=float(total) if total else None, completed=float(current), width=40),
        count,
    )
    parts: list[RenderableType] = [head, bar]
    if info.progress_message:
        parts.append(Text(info.progress_message, style="italic"))
    for line in recent:
        text = _log_line(line).split("\n")[0]  # first line of a traceback is enough here
        text.no_wrap, text.overflow = True, "ellipsis"
        parts.append(text)
    return Group(*parts)


async def watch_progress(
    client: Client,
    task_id: int,
    *,
    out: Console | None = None,
    lines: int = 8,
    poll_interval: float = 1.0,
) -> TaskInfo:
    """Show a live progress bar, the message and the latest log lines until the task ends.

    Woken by the pgtasks_progress / pgtasks_done notifications (Client.follow), polling
    every `poll_interval` s as a fallback. Returns the finished task. Also used by
    examples/media_pipeline.py.
    """
    out = out or console
    recent: deque[TaskLog] = deque(maxlen=lines)
    final: TaskInfo | None = None
    with Live(console=out, refresh_per_second=8, transient=False) as live:
        async with contextlib.aclosing(
            client.follow(task_id, poll_interval=poll_interval)
        ) as updates:
            async for info, new in updates:
                if lines:
                    recent.extend(new)
                live.update(_watch_view(info, recent), refresh=True)
                final = info
    if not out.is_terminal:
        out.line()  # Live leaves the cursor after its last render when output is a file
    assert final is not None
    return final


@cli.command()
@click.argument("task_id", type=int)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until it finishes.")
@click.option("--poll-interval", default=1.0, show_default=True, type=click.FloatRange(min=0.05))
@click.pass_context
def logs(ctx: click.Context, task_id: int, follow: bool, poll_interval: float) -> None:
    """Print a task's log lines (ctx.log and Python logging), oldest first."""

    async def go(c: Client) -> TaskInfo:
        if not follow:
            info = await c.get(task_id)  # TaskNotFound for an unknown id
            for line in await c.logs(task_id):
                console.print(_log_line(line), soft_wrap=True)
            return info
        final: TaskInfo | None = None
        async with contextlib.aclosing(c.follow(task_id, poll_interval=poll_interval)) as ups:
            async for info, new in ups:
                for line in new:
                    console.print(_log_line(line), soft_wrap=True)
                final = info
        assert final is not None
        return final

    info = run((_with_client if follow else _with_reader)(ctx, go))
    if follow:
        click.echo(f"task {task_id} {info.status}", err=True)


@cli.command()
@click.argument("task_id", type=int)
@click.option("--lines", default=8, show_default=True, type=click.IntRange(min=0),
              help="How many of the latest log lines to show.")  # fmt: skip
@click.option("--poll-interval", default=1.0, show_default=True, type=click.FloatRange(min=0.05),
              help="Seconds between polls when no notification arrives.")  # fmt: skip
@click.pass_context
def watch(ctx: click.Context, task_id: int, lines: int, poll_interval: float) -> None:
    """Live progress of one task until it ends; then its result (exit 0) or error (exit 1)."""
    info = run(
        _with_client(
            ctx, lambda c: watch_progress(c, task_id, lines=lines, poll_interval=poll_interval)
        )
    )
    if info.status == "DONE":
        console.print(Text.assemble(("DONE ", "green bold"), _outcome(info)), soft_wrap=True)
        return
    if info.status == "FAILED":
        console.print(Text.assemble(("FAILED ", "red bold"), info.error or ""), soft_wrap=True)
    else:
        console.print(Text(f"{info.status}", style="dim bold"))
    sys.exit(1)


# -- schedules (docs/schedules.md) ----------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """`30s`, `5m`, `1h30m`, `2d`, or plain seconds (`90`)."""
    value = text.strip().lower()
    try:
        return timedelta(seconds=float(value))
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value.replace(" ", ""):
        raise PgTasksError(f"not a duration: {text!r} (e.g. 30s, 5m, 1h30m, 2d)")
    return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in parts))


def format_duration(value: timedelta | None) -> str:
    """The inverse of parse_duration, for tables: 5m, 1h30m, 1.5s."""
    if value is None:
        return ""
    left = value.total_seconds()
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if left >= size:
            out += f"{int(left // size)}{unit}"
            left -= (left // size) * size
    if left or not out:
        out += f"{left:g}s"
    return out


@cli.group(invoke_without_command=True)
@click.pass_context
def schedules(ctx: click.Context) -> None:
    """Schedules with their next run (pgtasks.schedules); subcommands change them."""
    if ctx.invoked_subcommand is not None:
        return

    async def go(c: Client) -> None:
        rows = await c.schedules()
        table = Table(title=f"schedules ({len(rows)})")
        for col in ("name", "type", "when", "policy", "state"):
            table.add_column(col)
        for col in ("next run", "last task", "skipped"):
            table.add_column(col, no_wrap=True)
        for r in rows:
            when = r["cron"] or f"every {format_duration(r['every'])}"
            policy = r["overlap"] + (
                f", catch-up {format_duration(r['catch_up'])}" if r["catch_up"] else ""
            )
            if r["misfire_grace"] is not None:
                policy += f", grace {format_duration(r['misfire_grace'])}"
            table.add_row(
                r["name"],
                r["task_type"],
                f"{when} ({r['timezone']})" if r["cron"] else when,
                policy,
                "[yellow]paused[/]" if r["paused"] else "active",
                _cell(r["next_run_at"]) or "(computing)",
                f"{r['last_task_id']} {_status(r['last_status'])}" if r["last_status"] else "",
                _skipped(r),
            )
        console.print(table)

    run(_with_reader(ctx, go))


@cli.command("stranded")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1))
@click.pass_context
def stranded(ctx: click.Context, limit: int) -> None:
    """Tasks no live worker serves (pgtasks.stranded_tasks): started by a code version that
    no live worker runs or declares compatible, so they wait instead of resuming on other
    code. Start a worker serving the version, or declare it in compatible_versions."""

    async def go(c: Client) -> None:
        rows = await c.stranded(limit)
        table = Table(title=f"stranded tasks ({len(rows)}): no worker serves their version")
        for col in ("id", "type", "queue", "status", "version", "live workers run", "attempt"):
            table.add_column(col, no_wrap=True)
        for r in rows:
            table.add_row(
                str(r["id"]),
                r["task_type"],
                r["queue"],
                _status(r["status"]),
                r["code_version"],
                ", ".join(r["live_versions"] or []) or "(none)",
                str(r["attempt"]),
            )
        console.print(table)

    run(_with_reader(ctx, go))


def _skipped(r: Any) -> str:
    """Missed ticks skipped, plus the ones the overlap policy and the misfire grace
    skipped (when any)."""
    out = str(r["skipped"])
    if r["skipped_overlap"]:
        out += f" + {r['skipped_overlap']} overlap"
    if r["skipped_misfire"]:
        out += f" + {r['skipped_misfire']} misfired"
    return out


@schedules.command("add")
@click.argument("name")
@click.argument("task_type")
@click.option("--cron", default=None, help="5-field cron expression, e.g. '0 6 * * *'.")
@click.option("--every", default=None, help="Fixed interval: 30s, 5m, 1h30m, 2d.")
@click.option("--tz", "timezone", default="UTC", show_default=True, help="IANA time zone.")
@click.option("--params", default="{}", help="JSON object of parameters.")
@click.option("--queue", default=None)
@click.option("--priority", default=None, type=int)
@click.option("--overlap", default="allow", show_default=True,
              type=click.Choice(["allow", "skip", "cancel_previous"]))  # fmt: skip
@click.option("--catch-up", "catch_up", default="0", show_default=True,
              help="Run missed ticks this recent (e.g. 1h); 0: only the latest.")  # fmt: skip
@click.option("--misfire-grace", "misfire_grace", default=None,
              help="Skip (and count) ticks found later than this (e.g. 5m).")  # fmt: skip
@click.pass_context
def schedules_add(
    ctx: click.Context,
    name: str,
    task_type: str,
    cron: str | None,
    every: str | None,
    timezone: str,
    params: str,
    queue: str | None,
    priority: int | None,
    overlap: str,
    catch_up: str,
    misfire_grace: str | None,
) -> None:
    """Create or update schedule NAME enqueuing TYPE (exactly one of --cron and --every)."""
    if (cron is None) == (every is None):
        raise PgTasksError("give exactly one of --cron and --every")
    try:
        parsed = json.loads(params)
    except json.JSONDecodeError as exc:
        raise PgTasksError(f"--params is not valid JSON: {exc.msg} at position {exc.pos}") from exc
    if not isinstance(parsed, dict):
        raise PgTasksError("--params must be a JSON object, e.g. '{\"width\": 10}'")
    interval = parse_duration(every) if every is not None else None
    run(
        _with_client(
            ctx,
            lambda c: c.create_schedule(
                name,
                task_type,
                cron=cron,
                every=interval,
                params=parsed,
                queue=queue,
                priority=priority,
                timezone=timezone,
                overlap=overlap,
                catch_up=parse_duration(catch_up),
                misfire_grace=parse_duration(misfire_grace) if misfire_grace else None,
            ),
        )
    )
    click.echo(f"schedule {name} saved")


@schedules.command("rm")
@click.argument("name")
@click.pass_context
def schedules_rm(ctx: click.Context, name: str) -> None:
    """Drop a schedule (its tasks stay)."""
    run(_with_client(ctx, lambda c: c.drop_schedule(name)))
    click.echo(f"schedule {name} dropped")


@schedules.command("pause")
@click.argument("name")
@click.pass_context
def schedules_pause(ctx: click.Context, name: str) -> None:
    """Stop firing a schedule until resumed."""
    run(_with_client(ctx, lambda c: c.pause_schedule(name)))
    click.echo(f"schedule {name} paused")


@schedules.command("resume")
@click.argument("name")
@click.pass_context
def schedules_resume(ctx: click.Context, name: str) -> None:
    """Fire a paused schedule again, from now on (ticks missed while paused are not run)."""
    run(_with_client(ctx, lambda c: c.resume_schedule(name)))
    click.echo(f"schedule {name} resumed")


@schedules.command("run")
@click.argument("name")
@click.pass_context
def schedules_run(ctx: click.Context, name: str) -> None:
    """Enqueue one task of the schedule now; prints its id."""
    click.echo(run(_with_client(ctx, lambda c: c.trigger_schedule(name))))


# -- workflows (docs/workflows.md) ---------------------------------------------------------

WORKFLOW_STATE_STYLE = {"running": "yellow", "done": "green", "failed": "red", "cancelled": "dim"}


@cli.command("workflows")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.pass_context
def workflows_(ctx: click.Context, limit: int) -> None:
    """Workflows, newest first, with their state and counts by status."""

    async def go(c: Client) -> None:
        rows = await c.workflows(limit=limit)
        table = Table(title=f"workflows ({len(rows)})")
        cols = ["id", "name", "state", "total", "waiting", "pending", "running", "done",
                "failed", "cancelled", "created_at"]  # fmt: skip
        for col in cols:
            table.add_column(col)
        for r in rows:
            cells = [_cell(r[k]) for k in cols]
            cells[2] = f"[{WORKFLOW_STATE_STYLE.get(r['state'], 'white')}]{r['state']}[/]"
            table.add_row(*cells)
        console.print(table)

    run(_with_reader(ctx, go))


def workflow_tree(wf: dict[str, Any], max_nodes: int = 500) -> Tree:
    """The graph as a tree: each task under its first parent, its other parents named."""
    style = WORKFLOW_STATE_STYLE.get(wf["state"], "white")
    done, total = wf["done"], wf["total"]
    tree = Tree(
        f"workflow {wf['id']} {wf['name'] or ''} [{style}]{wf['state']}[/] ({done}/{total} done)"
    )
    names = {n["task_id"]: n["node"] or str(n["task_id"]) for n in wf["nodes"]}
    branches: dict[int, Tree] = {}
    for i, n in enumerate(wf["nodes"]):
        if i == max_nodes:
            tree.add(f"... {len(wf['nodes']) - max_nodes} more (pgtasks.workflow_graph lists all)")
            break
        progress = ""
        if n["progress_total"]:
            progress = f" {100 * (n['progress_current'] or 0) / n['progress_total']:.0f}%"
        label = f"{names[n['task_id']]} #{n['task_id']} [dim]{n['task_type']}[/] "
        label += _status(str(n["status"])) + progress
        others = [names.get(p, str(p)) for p in n["parent_ids"][1:]]
        if others:
            shown = ", ".join(others[:3]) + (f" +{len(others) - 3}" if len(others) > 3 else "")
            label += f" [dim](also after {shown})[/]"
        under = branches.get(n["parent_ids"][0], tree) if n["parent_ids"] else tree
        branches[n["task_id"]] = under.add(label)
    return tree


@cli.command("workflow")
@click.argument("args", nargs=-1, required=True)
@click.pass_context
def workflow_(ctx: click.Context, args: tuple[str, ...]) -> None:
    """`workflow ID`: its tasks as a tree, with status and progress;
    `workflow cancel ID`: cancel its unfinished tasks (running ones are stopped)."""
    if len(args) == 2 and args[0] == "cancel" and args[1].isdigit():
        n = run(_with_client(ctx, lambda c: c.cancel_workflow(int(args[1]))))
        click.echo(f"workflow {args[1]}: {n} task(s) cancelled")
        return
    if len(args) != 1 or not args[0].isdigit():
        raise click.UsageError("use `pgtasks workflow ID` or `pgtasks workflow cancel ID`")
    wf = run(_with_reader(ctx, lambda c: c.workflow(int(args[0]))))
    console.print(workflow_tree(wf))


def main() -> None:
    """Entry point: turn every expected failure into one line on stderr and exit 1."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except PgTasksError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except asyncpg.PostgresError as exc:
        click.echo(f"error: database: {exc}", err=True)
        sys.exit(1)
    except (OSError, asyncpg.InterfaceError) as exc:
        click.echo(f"error: cannot reach the database: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("PGTASKS_DEBUG"):
            raise
        click.echo(
            f"error: unexpected {type(exc).__name__}: {exc} (PGTASKS_DEBUG=1 shows the traceback)",
            err=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
