"""`PgTasksBackend`: Django's Tasks framework (`django.tasks`, or the `django_tasks`
backport on Django 5.2) on pgtasks.

A Django task is a module-level function; its pgtasks type is its dotted path
(`Task.module_path`, e.g. `shop.tasks.send_receipt`) and its params are
`{"args": [...], "kwargs": {...}}`, so `SELECT pgtasks.submit_task('shop.tasks.send_receipt',
'{"args": [42], "kwargs": {}}')` from psql enqueues the same task as `send_receipt.enqueue(42)`.

Enqueueing and reading results go through Django's own connection (psycopg), not pgtasks'
asyncpg pool: `enqueue()` inside `transaction.atomic()` is part of that transaction, and a
rollback leaves no task behind. Every statement is plain SQL calling pgtasks' functions and
views, so the database enforces the same rules as for any other client. Django's
connection keeps its own search_path (often `"$user", public`), so these statements name
everything they use with its schema: functions, types in casts and operators
(`OPERATOR(pg_catalog.=)`); every value travels as a string literal cast to a
pg_catalog type, so no unary minus or implicit cast is looked up through the search_path
either. An object someone created in `public` can never stand in for one of them.

The worker side (running the functions) is pgtasks.contrib.django.worker and the
`manage.py pgtasks_worker` command.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections
from django.db import DatabaseError as DjangoDatabaseError
from django.utils.module_loading import import_string

from pgtasks import tracing
from pgtasks.contrib.django._compat import (
    BaseTaskBackend,
    InvalidTask,
    Task,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
    normalize_json,
    task_enqueued,
)
from pgtasks.errors import translate

__all__ = ["PgTasksBackend", "declared_tasks"]

# -- the statements ------------------------------------------------------------------------
# Django's connection, Django's paramstyle (%s), and a search_path pgtasks does not choose:
# so these live here rather than in pgtasks.queries, and qualify every name.

#: One task, in the caller's transaction. Arguments left NULL take the type's registered
#: policy, else the database's settings (the backend's MAX_RETRIES and TIMEOUT, if set).
SUBMIT = """
SELECT pgtasks.submit_task(
    task_type   => %s::pg_catalog.text,
    params      => %s::pg_catalog.jsonb,
    queue       => %s::pg_catalog.text,
    priority    => %s::pg_catalog.int4,
    run_at      => %s::pg_catalog.timestamptz,
    max_retries => %s::pg_catalog.int4,
    timeout     => pg_catalog.make_interval(secs => %s::pg_catalog.float8),
    traceparent => %s::pg_catalog.text,
    tracestate  => %s::pg_catalog.text)
"""

#: When the task just submitted was created: a second statement, because the submit's
#: insert is not visible to the statement that made it. task_overview is granted to
#: submitters, so a role that may only submit can enqueue.
ENQUEUED_AT = """
SELECT o.created_at FROM pgtasks.task_overview o
 WHERE o.id OPERATOR(pg_catalog.=) %s::pg_catalog.int8
"""

#: A task as Django's TaskResult needs it, from the reader views: its row (task_status),
#: the worker of each claim (task_history: one per attempt) and each failed attempt's
#: error (task_attempt_errors). JSON values come back as text, whatever loader Django
#: registered for jsonb.
GET_RESULT = """
SELECT s.task_type, s.queue, s.status::pg_catalog.text AS status, s.priority, s.run_at,
       s.created_at, s.started_at, s.finished_at, s.error,
       s.params::pg_catalog.text AS params, s.result::pg_catalog.text AS result,
       (SELECT pg_catalog.array_agg(COALESCE(h.worker_id, '') ORDER BY h.at, h.attempt)
          FROM pgtasks.task_history h
         WHERE h.task_id OPERATOR(pg_catalog.=) s.id
           AND h.to_status OPERATOR(pg_catalog.=) 'RUNNING'::pgtasks.status) AS worker_ids,
       (SELECT pg_catalog.max(h.at)
          FROM pgtasks.task_history h
         WHERE h.task_id OPERATOR(pg_catalog.=) s.id
           AND h.to_status OPERATOR(pg_catalog.=) 'RUNNING'::pgtasks.status) AS last_attempted_at,
       (SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(e.error, e.traceback)
                                    ORDER BY e.attempt)
          FROM pgtasks.task_attempt_errors e
         WHERE e.task_id OPERATOR(pg_catalog.=) s.id)::pg_catalog.text AS errors
  FROM pgtasks.task_status s
 WHERE s.id OPERATOR(pg_catalog.=) %s::pg_catalog.int8
"""

#: pgtasks' statuses as Django's: waiting to run (on parents, for its first claim, or to
#: continue after a retryable error or a checkpoint) is READY; CANCELLED is FAILED, the
#: only ending Django has besides success.
STATUS = {
    "WAITING": TaskResultStatus.READY,
    "PENDING": TaskResultStatus.READY,
    "COMMIT": TaskResultStatus.READY,
    "RUNNING": TaskResultStatus.RUNNING,
    "DONE": TaskResultStatus.SUCCESSFUL,
    "FAILED": TaskResultStatus.FAILED,
    "CANCELLED": TaskResultStatus.FAILED,
}

#: The OPTIONS a PgTasksBackend reads (check() reports any other).
OPTIONS = ("DATABASE", "DATABASE_URL", "MAX_RETRIES", "TIMEOUT")

#: libpq parameters of a Django database's OPTIONS that asyncpg reads from a URL too; the
#: worker's URL carries these (others: set the backend's DATABASE_URL option).
URL_OPTIONS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl", "passfile",
               "target_session_attrs")  # fmt: skip

# Task ids are bigints: anything else is no result of ours, refused before it reaches a
# cast that would fail (and abort the caller's transaction).
_ID = re.compile(r"[0-9]{1,18}")

#: Tasks bound to each backend alias, by dotted path: every Task Django creates is
#: validated by its backend (Task.__post_init__), which records it here. The first one of
#: a path wins: that is the decorated function's, `.using()` copies come later.
_declared: dict[str, dict[str, Task[Any, Any]]] = {}


def declared_tasks(alias: str) -> dict[str, Task[Any, Any]]:
    """The tasks created so far for the backend `alias`, by dotted path (module_path)."""
    return dict(_declared.get(alias, {}))


class _SqlError(Exception):
    """A driver error reduced to what pgtasks.errors.translate reads."""

    def __init__(self, sqlstate: str, message: str, hint: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.hint = hint


@contextmanager
def _translated() -> Iterator[None]:
    """A PT SQLSTATE (psycopg 3 or psycopg2, wrapped by Django) as its pgtasks exception,
    as the asyncpg client raises it; other errors pass through unchanged."""
    try:
        yield
    except DjangoDatabaseError as exc:
        cause = exc.__cause__
        state = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        diag = getattr(cause, "diag", None)
        if not isinstance(state, str) or not state.startswith("PT"):
            raise
        message = getattr(diag, "message_primary", None) or str(cause)
        mapped = translate(_SqlError(state, message, getattr(diag, "message_hint", None)))
        raise mapped from exc


def _literal(value: object) -> str | None:
    """A value as the string its cast in the statement reads; None stays NULL."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat()  # naive: the session's TimeZone, as Django means it
    return str(value)


def _params(args: Iterable[Any], kwargs: Mapping[str, Any]) -> str:
    """The task's params: Django's JSON rules (tuples become lists...), and no NaN, which
    jsonb refuses."""
    value = {"args": normalize_json(list(args)), "kwargs": normalize_json(dict(kwargs))}
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


def exception_class_path(error: str, traceback: str | None) -> str:
    """The dotted path of the exception an attempt raised, as Django's TaskError names it.

    The worker stores `Name: message` and the formatted traceback, whose exception line
    names the class as `module.Qualname` (builtins without a module). Errors the worker
    writes itself (a timeout, a lease lost) have no traceback: builtins.Exception.
    """
    name = error.split(":", 1)[0].strip()
    if traceback and re.fullmatch(r"[A-Za-z_]\w*", name):
        pattern = re.compile(rf"((?:[A-Za-z_]\w*\.)*){re.escape(name)}(?::|$)")
        for line in reversed(traceback.splitlines()):
            m = pattern.match(line)
            if m:
                return m.group(0).rstrip(":") if m.group(1) else f"builtins.{name}"
    return "builtins.Exception"


def url_from_settings(settings_dict: Mapping[str, Any]) -> str:
    """A postgresql:// URL for the worker (asyncpg) from a Django DATABASES entry."""
    options = settings_dict.get("OPTIONS") or {}
    if options.get("service"):
        raise ImproperlyConfigured(
            "a database configured by service name has no URL the worker can use; set the "
            "pgtasks backend's OPTIONS['DATABASE_URL']"
        )
    user = quote(str(settings_dict.get("USER") or ""), safe="")
    password = quote(str(settings_dict.get("PASSWORD") or ""), safe="")
    host = str(settings_dict.get("HOST") or "")
    port = str(settings_dict.get("PORT") or "")
    query = {k: str(options[k]) for k in URL_OPTIONS if options.get(k)}
    netloc = ""
    if user:
        netloc = f"{user}:{password}@" if password else f"{user}@"
    if host.startswith("/"):  # a Unix socket directory
        query["host"] = host
        if port:
            query["port"] = port
    else:
        netloc += f"[{host}]" if ":" in host else quote(host, safe="")
        if port:
            netloc += f":{port}"
    name = quote(str(settings_dict.get("NAME") or ""), safe="")
    return f"postgresql://{netloc}/{name}" + (f"?{urlencode(query)}" if query else "")


class PgTasksBackend(BaseTaskBackend):
    """A Django Tasks backend that stores tasks in pgtasks and runs them with its workers.

    TASKS = {"default": {"BACKEND": "pgtasks.contrib.django.PgTasksBackend",
    "QUEUES": [...], "OPTIONS": {...}}}. OPTIONS: DATABASE (the Django database alias that
    holds the pgtasks schema, default "default"), DATABASE_URL (the worker's URL, when it
    cannot be derived from that database's settings), MAX_RETRIES and TIMEOUT (seconds):
    every task's, when set; else the database's settings decide (docs/django.md).
    """

    supports_defer = True  # run_after: submit_task's run_at
    supports_async_task = True  # async def tasks run on the worker's event loop
    supports_get_result = True  # from any process: the database has every task
    supports_priority = True  # higher runs first, as in Django

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.database: str = self.options.get("DATABASE", DEFAULT_DB_ALIAS)
        self.max_retries: Any = self.options.get("MAX_RETRIES")
        self.timeout: Any = self.options.get("TIMEOUT")

    # -- Django's interface --------------------------------------------------------------

    def validate_task(self, task: Task[Any, Any]) -> None:
        """Django's rules (module-level function, priority range, queue in QUEUES...);
        a valid task is remembered, so the worker can run it."""
        super().validate_task(task)
        _declared.setdefault(self.alias, {}).setdefault(task.module_path, task)

    def enqueue(
        self,
        task: Task[Any, Any],
        args: Any,
        kwargs: Any,
    ) -> TaskResult[Any]:
        """Submit the task through Django's connection: inside `transaction.atomic()` it
        is part of that transaction. Raises TypeError/ValueError for arguments that are
        not JSON, and pgtasks' exceptions (InvalidArgument...) when the database refuses."""
        self.validate_task(task)
        values = [
            task.module_path,
            _params(args, kwargs),
            task.queue_name,
            task.priority,
            task.run_after,
            self.max_retries,
            self.timeout,
            *tracing.current_context(),  # the request's span, when it is traced
        ]
        with _translated(), connections[self.database].cursor() as cursor:
            cursor.execute(SUBMIT, [_literal(v) for v in values])
            task_id = int(cursor.fetchone()[0])
            cursor.execute(ENQUEUED_AT, [str(task_id)])
            enqueued_at = cursor.fetchone()[0]
        result: TaskResult[Any] = TaskResult(
            task=task,
            id=str(task_id),
            status=TaskResultStatus.READY,
            enqueued_at=enqueued_at,
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=list(args),
            kwargs=dict(kwargs),
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult[Any]:
        """The task's state, read through Django's connection (so inside the transaction
        that enqueued it, too). TaskResultDoesNotExist for an unknown id, a pruned task,
        or a pgtasks task that is not a Django task of this project."""
        if not isinstance(result_id, str) or not _ID.fullmatch(result_id):
            raise TaskResultDoesNotExist(result_id)
        with connections[self.database].cursor() as cursor:
            cursor.execute(GET_RESULT, [result_id])
            row = cursor.fetchone()
            if row is None:
                raise TaskResultDoesNotExist(result_id)
            columns = [c[0] for c in cursor.description]
        return self._result(result_id, dict(zip(columns, row, strict=True)))

    def check(self, **kwargs: Any) -> Iterable[checks.CheckMessage]:
        """Django's system checks (`manage.py check`) for this backend's settings; none
        of them touches the database."""
        yield from super().check(**kwargs)
        where = f"TASKS[{self.alias!r}]"
        for key in sorted(set(self.options) - set(OPTIONS)):
            yield checks.Error(
                f"{where}: unknown OPTIONS key {key!r}",
                hint=f"The pgtasks backend reads {', '.join(OPTIONS)}.",
                obj=where,
                id="pgtasks.E001",
            )
        if self.database not in connections.settings:
            yield checks.Error(
                f"{where}: OPTIONS['DATABASE'] {self.database!r} is not in DATABASES",
                hint="Name the database that holds the pgtasks schema.",
                obj=where,
                id="pgtasks.E002",
            )
        elif connections[self.database].vendor != "postgresql":
            yield checks.Error(
                f"{where}: database {self.database!r} is not PostgreSQL",
                hint="pgtasks lives in a PostgreSQL schema; use a postgresql ENGINE.",
                obj=where,
                id="pgtasks.E003",
            )
        if self.max_retries is not None and (
            isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int)
        ):
            yield checks.Error(
                f"{where}: OPTIONS['MAX_RETRIES'] must be an integer or None",
                obj=where,
                id="pgtasks.E004",
            )
        if self.timeout is not None and (
            isinstance(self.timeout, bool) or not isinstance(self.timeout, int | float)
        ):
            yield checks.Error(
                f"{where}: OPTIONS['TIMEOUT'] must be a number of seconds or None",
                obj=where,
                id="pgtasks.E005",
            )

    # -- pgtasks' side -------------------------------------------------------------------

    def worker_database_url(self) -> str:
        """The URL a worker for this backend connects to: OPTIONS['DATABASE_URL'], else
        the one of Django's database OPTIONS['DATABASE'] names."""
        explicit = self.options.get("DATABASE_URL")
        if explicit:
            return str(explicit)
        return url_from_settings(connections[self.database].settings_dict)

    def _result(self, result_id: str, row: dict[str, Any]) -> TaskResult[Any]:
        task = self._task_of(result_id, row)
        params = json.loads(row["params"]) if row["params"] is not None else {}
        errors = [
            TaskError(
                exception_class_path=exception_class_path(error, tb),
                traceback=tb or error,
            )
            for error, tb in json.loads(row["errors"] or "[]")
        ]
        status = STATUS[row["status"]]
        if not errors and status == TaskResultStatus.FAILED and row["error"]:
            # Failed without an attempt's error (a result the database refused).
            errors.append(TaskError(exception_class_path="builtins.Exception",
                                    traceback=row["error"]))  # fmt: skip
        result: TaskResult[Any] = TaskResult(
            task=task,
            id=result_id,
            status=status,
            enqueued_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            last_attempted_at=row["last_attempted_at"],
            args=list(params.get("args") or []) if isinstance(params, dict) else [],
            kwargs=dict(params.get("kwargs") or {}) if isinstance(params, dict) else {},
            backend=self.alias,
            errors=errors,
            worker_ids=list(row["worker_ids"] or []),
        )
        if status == TaskResultStatus.SUCCESSFUL and row["result"] is not None:
            object.__setattr__(result, "_return_value", json.loads(row["result"]))
        return result

    def _task_of(self, result_id: str, row: dict[str, Any]) -> Task[Any, Any]:
        """The Django Task the row's type names, with the row's queue, priority and run_at
        (as Django's own database backend does); the decorated task as it is when those
        no longer validate (say, a queue taken out of QUEUES since)."""
        path = row["task_type"]
        try:
            task = import_string(path)
        except ImportError:
            task = None
        if not isinstance(task, Task):
            raise TaskResultDoesNotExist(
                f"task {result_id} has type {path!r}, which names no Django task here"
            )
        try:
            return task.using(
                priority=row["priority"],
                queue_name=row["queue"],
                run_after=row["run_at"],
                backend=self.alias,
            )
        except InvalidTask:
            return task
